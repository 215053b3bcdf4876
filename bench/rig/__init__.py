"""The processes a federation bench runs around the code it measures, one of each.

- ``broker``: a real Mosquitto on a free port with its own config, and its $SYS counters;
- ``state``: federation keys, the aggregator's state and the devices' signing keys;
- ``aggregator``: the aggregator as a child process (``fedface-aggregator serve``, or the
  same service with a plaintext sum), its CPU and RSS;
- ``box``: the emulated box, a process playing one or many devices over MQTT;
- ``watch``: a client that times rounds from announce to model pointer;
- ``session``: one run's rig as a context manager (broker, federation, watcher, boxes,
  aggregator), all stopped and cleaned up on leaving it;
- ``kiosk``: a real kiosk as a child process, an HTTP client of it, a PNG bomb;
- ``replay``: a box's federation client, and the signed rounds an attacker records and
  replays to it (issue 15, attack 3);
- ``procs``: starting, stopping and reading child processes;
- ``compare``: printing a figure next to its baseline from the same run.

Bench entry points import this package and ``bench.common``; nothing here imports a
bench entry point. The demo's box (``edge.demo.box``) is a real box assembled by
``edge.box.build_box``; this emulated box is a scripted MQTT client, cheap enough for 100
devices on two cores, and shares only the product's federation API with it.
"""
