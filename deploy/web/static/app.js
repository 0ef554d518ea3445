// The cameras page: live tiles and events over Server-Sent Events (/live).
"use strict";

const cameras = document.getElementById("cameras");
const eventsBox = document.getElementById("events");
const faces = cameras.dataset.faces === "true";
const MAX_EVENTS = 50;

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function tile(name) {
  for (const t of cameras.querySelectorAll(".tile")) if (t.dataset.camera === name) return t;
  const empty = document.getElementById("no-cameras");
  if (empty) empty.remove();
  const t = el("article", { class: "tile", "data-camera": name });
  t.append(el("h2", { class: "name" }, name));
  if (faces) {
    t.append(el("img", { class: "preview", alt: "live preview of " + name,
                         src: "/cameras/" + encodeURIComponent(name) + "/preview.mjpg" }));
  } else {
    t.append(el("div", { class: "preview off" }, "preview off"));
  }
  t.append(el("canvas", { class: "signal", width: 320, height: 60 }));
  const dl = el("dl");
  for (const [label, cls] of [["state", "state"], ["faces", "faces"], ["fps", "fps"],
                             ["p99 spot", "p99"]]) {
    dl.append(el("dt", {}, label), el("dd", { class: cls }, "–"));
  }
  t.append(dl);
  const tiles = [...cameras.querySelectorAll(".tile")];
  const after = tiles.find((x) => x.dataset.camera > name);
  cameras.insertBefore(t, after || null);
  return t;
}

function drawSignal(canvas, signal, threshold) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  const values = signal.filter((v) => v !== null);
  let top = Math.max(threshold || 0, ...values, 1e-6) * 1.15;
  const y = (v) => h - 2 - (v / top) * (h - 4);
  if (threshold) {
    ctx.strokeStyle = "#d9534f";
    ctx.setLineDash([4, 3]);
    ctx.beginPath(); ctx.moveTo(0, y(threshold)); ctx.lineTo(w, y(threshold)); ctx.stroke();
    ctx.setLineDash([]);
  }
  ctx.strokeStyle = "#2b7bb9";
  ctx.beginPath();
  let pen = false;
  signal.forEach((v, i) => {
    const x = (i / (signal.length - 1)) * w;
    if (v === null) { pen = false; return; }
    if (pen) ctx.lineTo(x, y(v)); else ctx.moveTo(x, y(v));
    pen = true;
  });
  ctx.stroke();
}

function showStatus(s) {
  const t = tile(s.name);
  const state = t.querySelector(".state");
  state.textContent = s.state;
  state.className = "state state-" + s.state.replace(/ /g, "-");
  const ids = (s.faces || []).map((f) => f[0]);
  t.querySelector(".faces").textContent = ids.length ? ids.join(", ") : "–";
  t.querySelector(".fps").textContent = s.fps === null || s.fps === undefined ? "–" : s.fps.toFixed(0);
  t.querySelector(".p99").textContent = s.p99_ms === null || s.p99_ms === undefined ? "–" : s.p99_ms + " ms";
  drawSignal(t.querySelector("canvas.signal"), s.signal, s.threshold);
}

function iso(seconds) {
  return new Date(seconds * 1000).toISOString().slice(0, 19).replace("T", " ");
}

function showEvent(e) {
  if (eventsBox.querySelector(`[data-id="${e.id}"]`)) return;
  const card = el("article", { class: "event fresh", "data-id": e.id, "data-stream": e.stream,
                               "data-label": e.label });
  const what = el("div", { class: "what" });
  what.append(el("span", { class: "label" }, e.label), " ",
              el("span", { class: "conf" }, e.confidence.toFixed(2)), " ",
              el("span", { class: "cam" }, e.stream));
  if (e.face_id) what.append(" ", el("span", { class: "face" }, "face " + e.face_id));
  const latency = e.apex_to_event_ms !== undefined ? ` · apex → event ${e.apex_to_event_ms} ms` : "";
  card.append(what, el("div", { class: "when" }, iso(e.apex_time) + latency));
  if (faces && e.images && e.images.length) {
    const images = el("div", { class: "images" });
    for (const n of e.images) {
      const fig = el("figure");
      fig.append(el("img", { src: `/media/${e.id}/${n}.png`, alt: n, class: "snap snap-" + n }),
                 el("figcaption", {}, n));
      images.append(fig);
    }
    card.append(images);
  }
  card.append(el("a", { href: "/history/" + e.id }, "details"));
  eventsBox.prepend(card);
  while (eventsBox.children.length > MAX_EVENTS) eventsBox.lastElementChild.remove();
  const t = tile(e.stream);
  t.classList.add("flash");
  setTimeout(() => t.classList.remove("flash"), 1500);
}

const feed = new EventSource("/live");
feed.addEventListener("hello", (m) => {
  const hello = JSON.parse(m.data);
  hello.cameras.forEach(showStatus);
  hello.events.forEach(showEvent);
});
feed.addEventListener("status", (m) => showStatus(JSON.parse(m.data)));
feed.addEventListener("event", (m) => showEvent(JSON.parse(m.data)));
feed.onerror = () => document.body.classList.add("disconnected");
feed.onopen = () => document.body.classList.remove("disconnected");
