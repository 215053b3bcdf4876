// FedFace kiosk: refreshes the live image and the activity lists. No inline scripts
// (the CSP forbids them); every list is rebuilt with DOM calls, never innerHTML.
"use strict";

(function () {
  const LIVE_INTERVAL_MS = 250;
  const STATUS_INTERVAL_MS = 1000;

  function toLogin() {
    window.location.assign("/login");
  }

  function timeText(ts) {
    return new Date(ts * 1000).toLocaleTimeString();
  }

  function fillTimes(root) {
    root.querySelectorAll("time[data-ts]").forEach(function (el) {
      el.textContent = timeText(parseFloat(el.dataset.ts));
    });
  }

  function startLive(img) {
    let previousUrl = null;
    async function tick() {
      if (document.hidden) {
        setTimeout(tick, 1000);
        return;
      }
      let wait = LIVE_INTERVAL_MS;
      try {
        const response = await fetch("/live.jpg", { cache: "no-store", credentials: "same-origin" });
        if (response.status === 401) {
          toLogin();
          return;
        }
        const seq = response.headers.get("X-Frame-Seq");
        if (response.ok && response.headers.get("X-Live") === "0") {
          // a frozen frame: never shown as live
          setLive(false, decodeURIComponent(response.headers.get("X-Notice") || ""));
        }
        if (response.ok && seq !== img.dataset.seq) {
          const url = URL.createObjectURL(await response.blob());
          img.src = url;
          img.dataset.seq = seq;
          const inView = response.headers.get("X-In-View");
          if (inView !== null) {
            setText("in-view", decodeURIComponent(inView));
          }
          if (previousUrl) {
            URL.revokeObjectURL(previousUrl);
          }
          previousUrl = url;
        } else if (!response.ok) {
          wait = 1000;
        }
      } catch (err) {
        wait = 2000; // the box is restarting or the network dropped: keep trying
      }
      setTimeout(tick, wait);
    }
    tick();
  }

  // The picture is live only while frames keep coming; a source that ended or was lost
  // leaves its last frame, which is greyed out under a NOT LIVE notice.
  function setLive(live, notice) {
    const img = document.getElementById("live");
    const banner = document.getElementById("source-banner");
    if (img) {
      img.classList.toggle("frozen", !live);
    }
    if (banner) {
      if (notice) {
        banner.textContent = notice;
      }
      banner.classList.toggle("hidden", live || !banner.textContent);
    }
    if (!live) {
      setText("in-view", "no live image");
    }
  }

  function alertDetail(item) {
    // once enrolled, the stranger's closest match at the time says nothing any more
    const closest = item.enrolled_as ? "dealt with" : item.best_name
      ? "closest " + item.best_name + " " + item.score.toFixed(2)
      : "nobody enrolled to compare";
    return closest + " \u00b7 seen " + item.seen;
  }

  function entry(item, isAlert) {
    const li = document.createElement("li");
    li.className = "entry" + (isAlert ? " alert" : "") + (item.acknowledged ? " acked" : "");
    li.dataset.id = item.id;
    const img = document.createElement("img");
    img.src = "/thumb/" + item.id + ".jpg";
    img.alt = isAlert ? "unknown face" : item.name;
    img.width = 64;
    img.height = 64;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = isAlert
      ? (item.enrolled_as ? "Enrolled as " + item.enrolled_as : "Unknown face")
      : item.name;
    const detail = document.createElement("span");
    detail.className = "detail";
    detail.textContent = isAlert
      ? alertDetail(item)
      : "score " + item.score.toFixed(2) + " \u00b7 " + item.seen;
    const when = document.createElement("time");
    when.textContent = timeText(item.last_seen);
    li.append(img, who, detail, when);
    if (isAlert) {
      const review = document.createElement("a");
      review.className = "button review";
      review.href = "/alerts/" + item.id;
      review.textContent = "Review";
      li.append(review);
    }
    return li;
  }

  function fillList(list, items, isAlert, emptyText) {
    const key = items.map(function (i) {
      return i.id + ":" + i.count + ":" + i.acknowledged + ":" + i.enrolled_as;
    }).join(",");
    if (list.dataset.key === key) {
      return; // unchanged: do not reload the thumbnails
    }
    list.dataset.key = key;
    list.replaceChildren();
    if (items.length === 0) {
      const li = document.createElement("li");
      li.className = "empty";
      li.textContent = emptyText;
      list.append(li);
      return;
    }
    items.forEach(function (item) { list.append(entry(item, isAlert)); });
  }

  function setBadge(el, count) {
    if (!el) {
      return;
    }
    el.textContent = String(count);
    el.classList.toggle("hidden", count === 0);
  }

  function setText(id, text) {
    const el = document.getElementById(id);
    if (el) {
      el.textContent = text;
    }
  }

  function startStatus() {
    const recent = document.getElementById("recent");
    const alerts = document.getElementById("alerts");
    async function tick() {
      let wait = STATUS_INTERVAL_MS;
      try {
        const response = await fetch("/api/status", { cache: "no-store", credentials: "same-origin" });
        if (response.status === 401) {
          toLogin();
          return;
        }
        if (response.ok) {
          const s = await response.json();
          if (recent) {
            fillList(recent, s.recent, false, "Nobody recognised yet.");
          }
          if (alerts) {
            fillList(alerts, s.alerts, true, "No alerts.");
          }
          setBadge(document.getElementById("alert-badge"), s.unacked);
          setBadge(document.getElementById("alert-count"), s.unacked);
          setText("worker-status", "Camera: " + s.worker.state + (s.worker.message ? " - " + s.worker.message : ""));
          setLive(s.live, s.notice);
          setText("frame-ms", s.worker.ms_per_frame + " ms per frame");
          setText("model-version", s.model_version);
        }
      } catch (err) {
        wait = 3000;
      }
      setTimeout(tick, wait);
    }
    tick();
  }

  document.addEventListener("DOMContentLoaded", function () {
    fillTimes(document);
    const live = document.getElementById("live");
    if (live) {
      startLive(live);
    }
    if (document.getElementById("alert-badge")) {
      startStatus();
    }
  });
})();
