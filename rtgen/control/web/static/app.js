// rtgen web control surface (GPL-3.0-or-later).
// Speaks OSC as JSON over one WebSocket: sends {address, args}; receives arrays of {address, args} (the
// daemon's OSC feedback and /rtgen/status). The controls are built from /api/addresses (the OSC table).
"use strict";

const COLORS = { melody: "#4fc3f7", chords: "#81c784", bass: "#ffb74d", drums: "#e57373", player: "#ba68c8" };
const BARS_SHOWN = 4;        // the roll shows the last four bars
const LOW = 28, HIGH = 100;  // pitch range of the roll (drums have a lane of their own at the bottom)
const DRUM_SHARE = 0.16;     // share of the roll's height for the drum lane
const DRUM_ROWS = 8;
const GROUP_MS = 30;         // note-ons of one part this close together are one onset (a chord)
const TRANSPORT = new Set(["/rtgen/play", "/rtgen/stop", "/rtgen/panic", "/rtgen/record/start",
  "/rtgen/record/stop"]);

let ws = null;
let status = {};
let beatsPerBar = 4, maxBeat = 0;
const notes = [];           // {part, pitch, t0, t1}; t1 null while the part has not played its next onset
const barLines = [];        // performance.now() of each bar's first beat
const lastGroup = {};       // part -> {t, notes}: the part's latest onset
const playerOpen = new Map(); // pitch -> note, from status.player_sounding
const syncers = [];         // functions that show a new status in the controls

// --- connection ---------------------------------------------------------------------------------
function send(address, args = []) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ address, args }));
  else toast("not connected to rtgen");
}

function connect() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  ws = new WebSocket(`${proto}//${location.host}/ws`);
  ws.onopen = () => setConn(true);
  ws.onclose = () => { setConn(false); setTimeout(connect, 1000); };
  ws.onmessage = (ev) => { for (const m of JSON.parse(ev.data)) handle(m); };
}

function setConn(on) {
  const el = document.getElementById("conn");
  el.className = on ? "conn on" : "conn off";
  el.title = on ? "connected" : "disconnected: retrying";
}

function handle(m) {
  const a = m.args || [];
  switch (m.address) {
    case "/rtgen/note": onNote(a[0], a[1]); break;
    case "/rtgen/beat": onBeat(a[0], a[1]); break;
    case "/rtgen/chord": text("s-chord", a[0]); break;
    case "/rtgen/section": text("s-section", a[0]); break;
    case "/rtgen/status": onStatus(a[0]); break;
    case "/rtgen/learned": toast(a[1] ? `${a[0]} learned: CC ${a[1]}` : `${a[0]}: no CC`, "info"); break;
    case "/rtgen/error": toast(a[0]); break;
    case "/rtgen/jack": toast(`JACK server ${a[0]}`); break;
    case "/rtgen/recording": toast(`recording to ${a[0]}`, "info"); break;
    case "/rtgen/recorded": toast(`recording written: ${a[0]}`, "info"); break;
  }
}

// --- the roll's data ----------------------------------------------------------------------------
function beatMs() { return 60000 / (status.tempo || 120); }
function barMs() { return beatMs() * beatsPerBar; }

function onNote(part, pitch) {
  const t = performance.now();
  if (part === "drums") { notes.push({ part, pitch, t0: t, t1: t + beatMs() / 4 }); return; }
  let g = lastGroup[part];
  if (!g || t - g.t > GROUP_MS) {
    // a part's note lasts until its next onset (the feedback carries note-ons only), at most a bar
    if (g) for (const n of g.notes) if (n.t1 === null) n.t1 = t;
    g = lastGroup[part] = { t, notes: [] };
  }
  const n = { part, pitch, t0: t, t1: null };
  g.notes.push(n);
  notes.push(n);
}

function closeAll(t) {
  for (const n of notes) if (n.t1 === null) n.t1 = t;
  for (const k of Object.keys(lastGroup)) delete lastGroup[k];
  playerOpen.clear();
}

function onBeat(bar, beat) {
  text("s-pos", `${bar}:${beat}`);
  if (beat === 1) {
    if (maxBeat > 0) beatsPerBar = maxBeat;
    maxBeat = 1;
    barLines.push(performance.now());
  } else {
    maxBeat = Math.max(maxBeat, beat);
  }
}

function onStatus(s) {
  if (!s || s.error) { if (s && s.error) text("s-mode", s.error); return; }
  const wasPlaying = status.playing;
  status = s;
  const now = performance.now();
  if (wasPlaying && !s.playing) closeAll(now);
  const sounding = new Set(s.player_sounding || []);
  for (const [pitch, n] of playerOpen) if (!sounding.has(pitch)) { n.t1 = now; playerOpen.delete(pitch); }
  for (const pitch of sounding) {
    if (!playerOpen.has(pitch)) {
      const n = { part: "player", pitch, t0: now, t1: null };
      playerOpen.set(pitch, n);
      notes.push(n);
    }
  }
  text("s-pos", `${s.bar}:${s.beat}`);
  text("s-chord", s.chord || "–");
  const cued = s.section_cued ? ` → ${s.section_cued}` : "";
  text("s-section", (s.section || "–") + cued);
  text("s-mode", s.playing ? s.mode : `${s.mode} (stopped)`);
  text("s-tempo", s.tempo.toFixed(1));
  text("s-key", s.key);
  text("s-late", `${s.late_steps}/${s.steps}`);
  text("s-rec", s.recording ? `● ${s.recording.split("/").pop()}` : "off");
  for (const sync of syncers) sync(s);
}

// --- the roll -----------------------------------------------------------------------------------
const canvas = document.getElementById("roll");
const ctx = canvas.getContext("2d");

function draw() {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.fillStyle = "#0d0f13";
  ctx.fillRect(0, 0, w, h);
  const now = performance.now();
  const span = barMs() * BARS_SHOWN;
  const px = w / span;
  const pitchH = h * (1 - DRUM_SHARE);
  const rowH = pitchH / (HIGH - LOW + 1);
  const laneH = (h * DRUM_SHARE) / DRUM_ROWS;
  ctx.fillStyle = "#1d212b";
  for (let p = LOW; p <= HIGH; p++) if (p % 12 === 0) ctx.fillRect(0, Math.round((HIGH - p + 1) * rowH), w, 1);
  ctx.fillStyle = "#2a2e39";
  ctx.fillRect(0, Math.round(pitchH), w, 1);
  ctx.fillStyle = "#3b4152";
  for (const t of barLines) {
    const x = Math.round(w - (now - t) * px);
    if (x >= 0 && x <= w) ctx.fillRect(x, 0, 1, h);
  }
  for (const n of notes) {
    const end = n.t1 ?? Math.min(now, n.t0 + barMs());
    const x0 = Math.round(w - (now - n.t0) * px);
    const x1 = Math.round(w - (now - end) * px);
    let y, hh;
    if (n.part === "drums") {
      y = pitchH + (n.pitch % DRUM_ROWS) * laneH;
      hh = laneH - 1;
    } else {
      y = (HIGH - Math.min(HIGH, Math.max(LOW, n.pitch))) * rowH;
      hh = rowH - 1;
    }
    ctx.fillStyle = COLORS[n.part] || "#ffffff";
    ctx.fillRect(x0, Math.round(y), Math.max(2, x1 - x0), Math.max(2, Math.round(hh)));
  }
  const old = now - span - barMs();
  while (notes.length && (notes[0].t1 ?? notes[0].t0 + barMs()) < old) notes.shift();
  while (barLines.length && barLines[0] < old) barLines.shift();
  requestAnimationFrame(draw);
}

// --- controls, built from the OSC table ---------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function shortName(address) { return address.replace("/rtgen/", "").replace("/", " "); }

function card(title, hint) {
  const c = el("div", { class: "card" }, el("h3", {}, title, hint ? el("small", {}, ` ${hint}`) : ""));
  document.getElementById("controls").append(c);
  return c;
}

function busy(input) { return document.activeElement === input && input.dataset.dragging === "1"; }

function slider(address, ctl, label, argsFor, current) {
  const [lo, hi] = ctl.range;
  const input = el("input", { type: "range", min: lo, max: hi, step: ctl.step, "aria-label": label,
    "data-address": address });
  const out = el("output", {}, "");
  let last = 0;
  const push = (final) => {
    const now = performance.now();
    if (!final && now - last < 50) return; // at most 20 messages a second while dragging
    last = now;
    const v = ctl.step >= 1 ? parseInt(input.value, 10) : parseFloat(input.value);
    send(address, argsFor(v));
  };
  input.addEventListener("pointerdown", () => { input.dataset.dragging = "1"; });
  input.addEventListener("pointerup", () => { input.dataset.dragging = "0"; });
  input.addEventListener("input", () => { out.textContent = input.value; push(false); });
  input.addEventListener("change", () => { out.textContent = input.value; push(true); });
  syncers.push((s) => {
    const v = current(s);
    if (v === undefined || v === null || busy(input)) return;
    input.value = v;
    out.textContent = ctl.step >= 1 ? String(Math.round(v)) : Number(v).toFixed(2);
  });
  return el("div", { class: "row" }, el("label", {}, label), input, out);
}

function choiceButtons(address, choices, current, argsFor) {
  const box = el("div", { class: "seg" });
  const buttons = choices.map((c) => el("button", { "data-address": address, "data-value": c,
    onclick: () => send(address, argsFor(c)) }, c));
  box.append(...buttons);
  syncers.push((s) => { const v = current(s); for (const b of buttons) b.classList.toggle("on", b.dataset.value === v); });
  return box;
}

function select(address, choices, current, argsFor, label) {
  const sel = el("select", { "aria-label": label, "data-address": address,
    onchange: () => send(address, argsFor(sel.value)) }, ...choices.map((c) => el("option", { value: c }, c)));
  syncers.push((s) => { const v = current(s); if (v && document.activeElement !== sel) sel.value = v; });
  return sel;
}

function textRow(address, ctl, parse) {
  const input = el("input", { type: ctl.kind === "number" ? "number" : "text", placeholder: ctl.placeholder || "",
    "aria-label": shortName(address) });
  const go = () => { if (input.value.trim()) send(address, [parse(input.value.trim())]); };
  input.addEventListener("keydown", (e) => { if (e.key === "Enter") go(); });
  const row = el("div", { class: "row" }, input, el("button", { "data-address": address, onclick: go }, "send"));
  for (const p of ctl.presets || []) row.append(el("button", { onclick: () => send(address, [p]) }, p));
  return row;
}

// MIDI learn: "learn" arms the control (the next CC moved on the player's input is mapped to it); the button
// shows its CC, and "×" removes the mapping (/rtgen/unlearn)
function learnButtons(name) {
  const learn = el("button", { class: "learn", "data-learn": name, title: `MIDI learn: move a knob for ${name}`,
    onclick: () => send("/rtgen/learn", [name]) }, "learn");
  const forget = el("button", { class: "learn", "data-unlearn": name, title: `remove ${name}'s CC`,
    onclick: () => send("/rtgen/unlearn", [name]) }, "×");
  syncers.push((s) => {
    const cc = s.cc ? s.cc[name] : 0;
    const armed = s.learning === name;
    learn.classList.toggle("armed", armed);
    const label = armed ? "move a knob…" : cc ? `CC ${cc}` : "learn";
    if (learn.textContent !== label) learn.textContent = label;
    forget.hidden = !cc || armed;
  });
  return el("span", { class: "learn-box" }, learn, forget);
}

function build(table) {
  const byName = Object.fromEntries(table.map((e) => [e.address, e]));
  const done = new Set(TRANSPORT);
  const learnable = new Set(byName["/rtgen/learn"] ? byName["/rtgen/learn"].control.controls : []);
  for (const a of ["/rtgen/learn", "/rtgen/unlearn"]) done.add(a);
  const play = card("Play");
  for (const a of ["/rtgen/mode", "/rtgen/tempo", "/rtgen/temperature", "/rtgen/top_p", "/rtgen/density",
    "/rtgen/swing", "/rtgen/key"]) {
    const e = byName[a];
    if (!e) continue;
    done.add(a);
    const w = widget(e), name = shortName(a);
    if (!learnable.has(name)) play.append(w);
    else if (w.classList.contains("row")) { w.querySelector("label").after(learnButtons(name)); play.append(w); }
    else play.append(el("div", { class: "row" }, el("label", {}, name), learnButtons(name)), w);
    if (name === "mode" && learnable.has("mode_extra")) {  // the second mode knob: band, duet, chorale
      play.append(el("div", { class: "row" }, el("label", { title: "a knob for band, duet and chorale" },
        "mode: band / duet / chorale"), learnButtons("mode_extra")));
    }
  }
  // band mode's arranger: a button per control, its MIDI learn (band_fill, ...) beside it
  const band = table.filter((e) => e.address.startsWith("/rtgen/band/"));
  if (band.length) {
    const c = card("Band", "(band mode's arranger: on the next bar line)");
    const row = el("div", { class: "row band" });
    for (const e of band) {
      done.add(e.address);
      const control = e.address.replace("/rtgen/band/", ""), cc = `band_${control}`;
      row.append(el("button", { "data-address": e.address, title: e.description, onclick: () => send(e.address) },
        control));
      if (learnable.has(cc)) row.append(learnButtons(cc));
    }
    c.append(row);
  }
  const panic = document.querySelector("#transport button[data-address='/rtgen/panic']");
  if (panic && learnable.has("panic")) panic.after(learnButtons("panic"));
  const parts = table.filter((e) => e.control.kind.startsWith("part-"));
  const names = parts.length ? (parts[0].control.parts || Object.keys(parts[0].control.choices)) : [];
  for (const part of names) {
    const c = card(part);
    c.querySelector("h3").prepend(el("i", { class: "swatch", style: `background:${COLORS[part]}` }));
    for (const e of parts) c.append(partWidget(e, part));
  }
  for (const e of parts) done.add(e.address);
  const rest = table.filter((e) => !done.has(e.address));
  if (rest.length) {
    const more = card("More", "(every other OSC address)");
    for (const e of rest) {
      more.append(el("div", { class: "row" }, el("label", { title: e.description }, shortName(e.address))));
      more.append(widget(e));
    }
  }
  document.getElementById("legend").append(
    ...Object.entries(COLORS).map(([p, c]) => el("span", {}, el("i", { style: `background:${c}` }), p)));
}

function widget(e) {
  const ctl = e.control, a = e.address, name = shortName(a);
  switch (ctl.kind) {
    case "range":
      return slider(a, ctl, name, (v) => [v], (s) => s[ctl.state]);
    case "choice":
      return choiceButtons(a, ctl.choices, (s) => s[ctl.state], (v) => [v]);
    case "key": {
      const tonic = el("select", { "aria-label": "key tonic" }, el("option", { value: "off" }, "off"),
        ...ctl.tonics.map((t) => el("option", { value: t }, t)));
      const scale = el("select", { "aria-label": "key scale" }, ...ctl.scales.map((t) => el("option", { value: t }, t)));
      const push = () => send(a, [tonic.value === "off" ? "off" : `${tonic.value} ${scale.value}`]);
      tonic.addEventListener("change", push);
      scale.addEventListener("change", push);
      syncers.push((s) => {
        if (document.activeElement === tonic || document.activeElement === scale) return;
        if (s.key === "off") { tonic.value = "off"; return; }
        const i = s.key.indexOf(" ");
        tonic.value = s.key.slice(0, i);
        scale.value = s.key.slice(i + 1);
      });
      return el("div", { class: "row" }, el("label", {}, "key"), tonic, scale);
    }
    case "button":
      return el("div", { class: "row" }, el("button", { "data-address": a, onclick: () => send(a) }, name));
    case "number":
      return textRow(a, ctl, (v) => parseInt(v, 10));
    default:
      return textRow(a, ctl, (v) => v);
  }
}

function partWidget(e, part) {
  const ctl = e.control, a = e.address;
  const cur = (s) => (s.parts && s.parts[part] ? s.parts[part][ctl.state] : undefined);
  switch (ctl.kind) {
    case "part-range":
      return slider(a, ctl, shortName(a), (v) => [part, v], cur);
    case "part-choice":
      return el("div", { class: "row" }, el("label", {}, "style"),
        select(a, ctl.choices[part], cur, (v) => [part, v], `${part} style`));
    case "part-toggle": {
      const b = el("button", { "data-address": a, "data-part": part }, "on");
      b.addEventListener("click", () => send(a, [part, b.classList.contains("on") ? 0 : 1]));
      syncers.push((s) => { const v = cur(s); b.classList.toggle("on", !!v); b.textContent = v ? "on" : "muted"; });
      return el("div", { class: "row" }, el("label", {}, "play"), b);
    }
    default:
      return el("div");
  }
}

// --- small things -------------------------------------------------------------------------------
function text(id, value) { const e = document.getElementById(id); if (e.textContent !== value) e.textContent = value; }

let toastTimer = 0;
function toast(message, kind = "error") {
  const t = document.getElementById("toast");
  t.textContent = message;
  t.classList.toggle("info", kind === "info");
  t.classList.add("show");
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => t.classList.remove("show"), 4000);
}

for (const b of document.querySelectorAll("#transport button[data-address]")) {
  b.addEventListener("click", () => send(b.dataset.address));
}
document.getElementById("rec-start").addEventListener("click", () => {
  const path = document.getElementById("rec-path").value.trim();
  const stamp = new Date().toISOString().replace(/[-:]/g, "").slice(0, 15);
  send("/rtgen/record/start", [path || `rtgen-${stamp}.mid`]);
});

fetch("api/addresses").then((r) => r.json()).then(build).catch((err) => toast(`cannot load the controls: ${err}`))
  .finally(connect);
requestAnimationFrame(draw);
