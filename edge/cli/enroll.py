"""The box's gallery from the command line: ``fedface-edge enroll`` (add people from
photos) and ``fedface-edge people list|remove`` (who is enrolled)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edge.cli.context import box, warn_if_no_data_dir
from edge.cli.errors import EXIT_INPUT, EXIT_INTERRUPTED, CliError
from edge.cli.identify import progress_bar

if TYPE_CHECKING:
    from edge.serving.recognizer import EnrolOutcome


def _enrol_named(ctx: typer.Context, name: str, images: list[Path]) -> None:
    from edge.gallery.names import check_name

    name = check_name(name)  # the kiosk's rule: no control or text-direction characters
    recognizer = box(ctx).recognizer()
    existed = any(p.name == name for p in recognizer.gallery.people())
    with progress_bar(len(images), f"enrolling {name}") as advance:
        # every photo named on the command line must be usable: the first bad one stops
        # the enrolment before anything is written
        outcome = recognizer.enroll_images(name, images, skip_bad=False, progress=advance)
    for image, reason in outcome.skipped:  # a group photo with none of them in it
        typer.echo(f"skipped {image}: {reason}", err=True)
    verb = "added" if existed else "enrolled"
    if not outcome.added:  # not "added X: 0 image(s)" (helper-47), also when another
        verb = "nothing added to"  # enrolment of the same photos at once stored them
    typer.echo(f"{verb} {name}: {len(outcome.added)} image(s) (model {recognizer.model_version})"
               + _already(outcome.already))
    _warn(outcome)


def _already(images: list[Path]) -> str:
    return (f"; {len(images)} image(s) already enrolled for the same person, not added "
            "again" if images else "")


def _warn(outcome: EnrolOutcome) -> None:
    """What the technician should look at: the kiosk says the same (helper-47)."""
    for image, (x, y, w, h) in outcome.group_photos:
        typer.echo(f"warning: {image} shows more than one face: the largest (at x={x} y={y}, "
                   f"{w}x{h} px) was enrolled for {outcome.name}, with no photo of them "
                   "alone to check it against; if it is not them, fedface-edge people "
                   f"remove '{outcome.name}' and enrol photos of them alone", err=True)
    for image, (x, y, w, h) in outcome.picked:
        typer.echo(f"note: {image} shows more than one face: the one at x={x} y={y} "
                   f"({w}x{h} px), not the largest, looks like {outcome.name}'s other photos "
                   "and was enrolled", err=True)
    like = outcome.looks_like
    if like is not None:
        # "remove NAME" deletes NAME's earlier photos too: not the advice for a person
        # who had some (helper-53)
        fix = (f"fedface-edge people remove '{outcome.name}'" if not outcome.existed else
               "remove one of the two names (fedface-edge people remove NAME: all of that "
               "name's photos go)")
        typer.echo(f"warning: the photos of {outcome.name} look like {like.name} (similarity "
                   f"{like.score:.2f}), who is already enrolled: if it is the same person, "
                   f"{fix}", err=True)


def _enrol_folder(ctx: typer.Context, root: Path, max_per_person: int | None) -> None:
    from edge.gallery.names import NameRejected, check_name
    from edge.serving.recognizer import people_folders
    from edge.vision.image_files import scan

    folders = people_folders(root)
    plan, refused, inner_dirs = [], [], []
    # a file beside the people's folders is no one's photo: said, not dropped silently
    not_images = [(f, "not in a person's sub-folder (--from-dir takes one sub-folder of "
                      "photos per person)")
                  for f in sorted(root.iterdir()) if f.is_file() and not f.name.startswith(".")]
    for folder in folders:
        try:
            name = check_name(folder.name)
        except NameRejected as exc:
            refused.append(f"{folder.name!r}: {exc}")
            continue
        found = scan([folder], recursive=False)  # the box's one rule: images by content
        plan.append((name, found.images))
        not_images += found.skipped
        # a folder inside a person's folder (photos by year, say) was passed over without
        # a word (helper-64); not taken either: a folder of several people one level too
        # high would make them one person
        inner_dirs += [(inner, f"a folder inside {name}'s folder: --from-dir takes the "
                               "photos directly in each person's folder (move them up, or "
                               f"`fedface-edge enroll '{name}' {inner}/*`)")
                       for inner in sorted(folder.iterdir())
                       if inner.is_dir() and not inner.name.startswith(".")]
    if refused:
        # before any photo is read: a folder name is the person's name, nothing to skip to
        raise CliError(f"folder names that cannot be a person's name: {'; '.join(refused)}",
                       hint="rename those sub-folders; nothing was enrolled")
    total = sum(len(imgs) if max_per_person is None else min(len(imgs), max_per_person)
                for _, imgs in plan)
    recognizer = box(ctx).recognizer()
    enrolled, photos, skipped, nobody, already = 0, 0, not_images + inner_dirs, [], []
    warned: list[EnrolOutcome] = []
    name = ""
    try:
        with progress_bar(total, f"enrolling {len(plan)} people") as advance:
            for name, imgs in plan:
                outcome = recognizer.enroll_images(name, imgs, max_images=max_per_person,
                                                   progress=advance)
                skipped += outcome.skipped
                already += outcome.already
                warned.append(outcome)
                if outcome.added:
                    enrolled += 1
                    photos += len(outcome.added)
                elif not outcome.already:
                    nobody.append(name)
    except KeyboardInterrupt:  # Ctrl-C: say what is kept (as the gallery has it: the
        # signal may come after a person's photos were stored) and how to go on
        held = {p.name for p in recognizer.gallery.people()}
        kept = [n for n, _ in plan if n in held]
        typer.echo(f"interrupted while enrolling {name}: {len(kept)} of {len(plan)} people "
                   f"are enrolled ({name} {'is' if name in held else 'is not'}); the same "
                   "command again enrols the rest (photos already enrolled are not added "
                   "again)", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    for image, reason in skipped:
        typer.echo(f"skipped {image}: {reason}", err=True)
    for outcome in warned:
        _warn(outcome)
    for name in nobody:
        images = dict(plan)[name]
        why = ("the reasons are above" if images else
               "its folder holds no photos")  # nothing above to point at (helper-47)
        typer.echo(f"not enrolled: {name} (no photo with a face that could be read; "
                   f"{why})", err=True)
    typer.echo(f"enrolled {enrolled} of {len(plan)} people from {photos} image(s); "
               f"skipped {len(skipped) - len(inner_dirs)} file(s)"
               + (f" and {len(inner_dirs)} folder(s)" if inner_dirs else "")
               + f" (model {recognizer.model_version})"
               + _already(already))
    if enrolled == 0 and not already:
        raise CliError(f"no one could be enrolled from {root}",
                       hint="each sub-folder needs photos with a visible face; the lines "
                       "above say why each file was skipped",
                       exit_code=EXIT_INPUT)


def enroll(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(
        help="Person's name (unique in the gallery).", show_default=False)] = None,
    images: Annotated[list[Path] | None, typer.Argument(
        help="Photos of that person (the largest face of each is used).",
        show_default=False)] = None,
    from_dir: Annotated[Path | None, typer.Option(
        "--from-dir", help="Folder with one sub-folder of photos per person (named after "
        "them). Photos without a face are reported and skipped.", show_default=False)] = None,
    max_per_person: Annotated[int | None, typer.Option(
        "--max-per-person", min=1, help="With --from-dir: at most N photos per person.",
        show_default=False)] = None,
) -> None:
    """Enrol NAME from IMAGE..., or everyone in --from-dir."""
    if from_dir is not None:
        if name is not None or images:
            raise CliError("give either NAME IMAGE... or --from-dir DIR, not both")
        _enrol_folder(ctx, from_dir, max_per_person)
        return
    if name is not None and not images and Path(name).is_dir():
        raise CliError(f"no photos given: {name} is a folder, not a person's name",
                       hint=f"fedface-edge enroll --from-dir {name} (one sub-folder per "
                       f"person), or fedface-edge enroll NAME {name}/*")
    if name is not None and not images and Path(name).is_file():
        raise CliError(f"no photos given for {name!r}: it is a file, not a person's name "
                       "(give the name first)", hint="e.g. fedface-edge enroll Ada ada1.jpg")
    if name is None or not images:
        raise CliError("nothing to enrol: give NAME IMAGE... or --from-dir DIR",
                       hint="e.g. fedface-edge enroll Ada ada1.jpg ada2.jpg")
    folders = [image for image in images if image.is_dir()]
    if folders:  # the photos of one person may be taken from a folder with a shell glob
        raise CliError(f"{folders[0]} is a folder: give NAME its photos, or enrol "
                       "one sub-folder per person with --from-dir",
                       hint=f"fedface-edge enroll {name!r} {folders[0]}/*")
    if max_per_person is not None:
        images = images[:max_per_person]
    _enrol_named(ctx, name, images)


people_app = typer.Typer(help="List and remove enrolled people.", no_args_is_help=True)


@people_app.command("list")
def list_people(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Enrolled people with their crop count, the model versions of their embeddings and
    whether federated rounds train on them (one in five are calibration people, whom no
    round trains on: docs/operations.md, "Each model's own threshold")."""
    from edge.gallery.files import DB_FILENAME
    from edge.gallery.holdout import is_calibration_person

    # a listing creates no gallery in a data dir that has none (on a full disk it failed);
    # a data dir that is not there is opened, so that a wrong one is said
    warn_if_no_data_dir(ctx)
    data_dir = Path(box(ctx).settings.data_dir)
    unopened = data_dir.is_dir() and not (data_dir / DB_FILENAME).exists()
    people = [] if unopened else box(ctx).gallery().people()
    if as_json:
        typer.echo(json.dumps([
            {"id": p.id, "name": p.name, "crops": p.crops, "embeddings": p.embeddings,
             "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(p.created)),
             "calibration": is_calibration_person(p.id)}
            for p in people], indent=2))
        return
    if not people:
        typer.echo("no one is enrolled (enrol with `fedface-edge enroll NAME IMAGE...`)",
                   err=True)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "crops", "model versions", "enrolled (UTC)", "rounds")
    for p in people:
        versions = ", ".join(f"{v} ({n})" for v, n in sorted(p.embeddings.items()))
        table.add_row(p.name, str(p.crops), versions,
                      time.strftime("%Y-%m-%d %H:%M", time.gmtime(p.created)),
                      "calibration" if is_calibration_person(p.id) else "train")
    Console().print(table)
    held = sum(is_calibration_person(p.id) for p in people)
    typer.echo(f"{len(people)} people, {held} of them calibration people (no federated round "
               "trains on them: each model's threshold is measured on their faces)")


@people_app.command("remove")
def remove(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Exact name.")]) -> None:
    """Delete a person with all their stored crops and embeddings."""
    removed = box(ctx).gallery().remove_person(name)
    typer.echo(f"removed {name} ({removed} crops and their embeddings)")


def register(app: typer.Typer) -> None:
    app.command("enroll")(enroll)
    app.add_typer(people_app, name="people")
