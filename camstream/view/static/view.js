// The wall: one tile per camera, kept current by the server's event stream
// (/api/events: a "snapshot", then "tiles" holding only what changed).
"use strict";

(() => {
  const wall = document.getElementById("wall");
  const template = document.getElementById("tile-template");
  const summary = document.getElementById("summary");
  const connection = document.getElementById("connection");
  const empty = document.getElementById("empty");
  const tiles = new Map(); // camera -> {root, data}
  let offset = 0; // the server's clock minus ours
  let staleS = 5;
  // What this page received, and how late (for tests and the curious).
  const stats = (window.camstreamView = {
    connected: false, snapshots: 0, events: 0, tileUpdates: 0, latenciesMs: [],
  });
  const serverNow = () => Date.now() + offset;

  function place(camera, root) {
    let after = null;
    for (const [other, entry] of tiles) {
      if (other > camera && (after === null || other < after.camera)) after = { camera: other, root: entry.root };
    }
    wall.insertBefore(root, after ? after.root : null);
  }

  function upsert(t) {
    let entry = tiles.get(t.camera);
    if (!entry) {
      const root = template.content.firstElementChild.cloneNode(true);
      const href = camstream.cameraUrl(t.camera);
      root.querySelector(".tile-link").href = href;
      const name = root.querySelector(".cam-id");
      name.href = href;
      name.textContent = t.camera;
      entry = { root, data: null };
      place(t.camera, root);
      tiles.set(t.camera, entry);
    }
    const previous = entry.data;
    if (previous && t.seq !== previous.seq && t.published_ts_ms > previous.published_ts_ms) {
      stats.latenciesMs.push(serverNow() - t.published_ts_ms);
      if (stats.latenciesMs.length > 1000) stats.latenciesMs.shift();
    }
    entry.data = t;
    camstream.renderTile(entry.root, t, serverNow());
    stats.tileUpdates += 1;
  }

  function remove(camera) {
    const entry = tiles.get(camera);
    if (entry) {
      entry.root.remove();
      tiles.delete(camera);
    }
  }

  function showSummary(s) {
    const since = new Date(s.since_ms).toLocaleTimeString();
    summary.textContent = `${s.cameras} cameras · ${s.live} live · ${s.stale} stale` +
      (s.waiting ? ` · ${s.waiting} waiting` : "") + ` · counts since ${since}`;
    empty.hidden = s.cameras > 0;
  }

  function connect() {
    const source = new EventSource("/api/events");
    source.addEventListener("open", () => {
      stats.connected = true;
      connection.textContent = "live";
      connection.className = "connection live";
      document.body.classList.remove("offline");
    });
    source.addEventListener("snapshot", (event) => {
      const data = JSON.parse(event.data);
      offset = data.server_ms - Date.now();
      staleS = data.stale_s;
      const seen = new Set(data.tiles.map((t) => t.camera));
      for (const camera of [...tiles.keys()]) if (!seen.has(camera)) remove(camera);
      data.tiles.forEach(upsert);
      showSummary(data.summary);
      stats.snapshots += 1;
    });
    source.addEventListener("tiles", (event) => {
      const data = JSON.parse(event.data);
      offset = data.server_ms - Date.now();
      data.tiles.forEach(upsert);
      data.removed.forEach(remove);
      showSummary(data.summary);
      stats.events += 1;
    });
    source.addEventListener("error", () => {
      stats.connected = false;
      connection.textContent = "reconnecting…";
      connection.className = "connection down";
      document.body.classList.add("offline");
    });
  }

  // Ages tick between updates; a page cut off from the server marks its tiles stale.
  setInterval(() => {
    const now = serverNow();
    for (const { root, data } of tiles.values()) {
      if (!stats.connected && data.status === "live" && now - data.last_seen_ms > staleS * 1000) {
        data.status = "stale";
      }
      camstream.renderTile(root, data, now);
    }
  }, 1000);

  connect();
})();
