// imgsave portal: fills the page from the REST API (/api/v1) with the session cookie.
// No build step, no framework. Text from the API is only ever set with textContent.
"use strict";

(() => {
  const API = "/api/v1";
  const POLL_MS = 1000;
  const RECENT_SAVES = 5;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const $ = (id) => document.getElementById(id);
  const saves = new Map(); // job_id -> status dict
  let polling = null;
  let showAllSaves = false;
  let uid = 0;

  class ApiError extends Error {
    constructor(status, body) {
      const err = (body && body.error) || {};
      super(err.message || `HTTP ${status}`);
      this.status = status;
      this.code = err.code || "";
      this.retryable = Boolean(err.retryable);
    }
  }

  async function api(method, path, body, headers = {}) {
    const options = { method, credentials: "same-origin", headers: { Accept: "application/json", ...headers } };
    if (method !== "GET") options.headers["X-CSRF-Token"] = csrf;
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch(API + path, options);
    let data = null;
    try { data = await response.json(); } catch (_) { data = null; }
    if (response.status === 401) { window.location.reload(); }
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "text") node.textContent = value;
      else if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children) if (child) node.append(child);
    return node;
  }

  function humanBytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "kB", "MB", "GB", "TB"];
    let value = n, unit = 0;
    while (value >= 1000 && unit < units.length - 1) { value /= 1000; unit++; }
    return `${unit ? value.toFixed(1) : value} ${units[unit]}`;
  }

  function when(iso) {
    if (!iso) return "–";
    const date = new Date(iso);
    return isNaN(date) ? iso : date.toLocaleString();
  }

  function announce(text) { $("announce").textContent = text; }

  function setStatus(id, text, isError = false) {
    const node = $(id);
    node.textContent = text;
    node.classList.toggle("error", isError);
  }

  // ---- sessions and the save form -------------------------------------------------

  function saveForm(session) {
    const form = document.getElementById("save-form-template").content.firstElementChild.cloneNode(true);
    form.querySelector('[data-slot="container"]').textContent = session ? session.container : "a container";
    for (const label of form.querySelectorAll("label[data-for]")) {
      const input = form.querySelector(`[name="${label.dataset.for}"]`);
      const id = `f${++uid}-${label.dataset.for}`;
      input.id = id;
      label.htmlFor = id;
    }
    const targetError = form.querySelector('[data-error="target"]');
    const otherError = form.querySelector('[data-error="other"]');
    targetError.id = `f${++uid}-target-error`;
    otherError.id = `f${++uid}-other-error`;
    for (const input of form.querySelectorAll("[data-field^=target]")) {
      input.setAttribute("aria-describedby", targetError.id);
    }
    if (!session) addManualFields(form);
    form.addEventListener("input", () => { form.dataset.key = ""; scheduleCheck(form, session); });
    form.addEventListener("reset", () => {
      clearTimeout(checks.get(form));
      checkSeq.set(form, (checkSeq.get(form) || 0) + 1); // answers still on the way are stale
      showErrors(form, {});
      form.querySelector('[data-slot="preview"]').textContent = "NAME:TAG";
    });
    form.addEventListener("submit", (event) => { event.preventDefault(); submitSave(form, session); });
    return form;
  }

  function addManualFields(form) {
    const fields = form.querySelector(".fields");
    for (const [name, label, hint] of [["node", "Node or job id", "n1"],
                                       ["container", "Container name", "jupyter-alice"]]) {
      const id = `f${++uid}-${name}`;
      fields.prepend(el("div", { class: "field" },
        el("label", { for: id, text: label }),
        el("input", { id, name, "data-field": name, placeholder: hint, spellcheck: "false",
                      autocomplete: "off", "aria-describedby": form.querySelector('[data-error="other"]').id })));
    }
  }

  function requestBody(form, session) {
    const value = (name) => (form.querySelector(`[name="${name}"]`) || {}).value || "";
    const body = {
      container: session ? session.container : value("container").trim(),
      target: `${value("name").trim()}:${value("tag").trim()}`,
      formats: value("format").split(",").filter(Boolean),
      category: value("category"),
    };
    const node = session ? session.node : value("node").trim();
    if (/^[0-9]+$/.test(node)) body.job_id = node; else body.node = node;
    form.querySelector('[data-slot="preview"]').textContent = body.target;
    return body;
  }

  const checks = new WeakMap(); // form -> pending timer
  const checkSeq = new WeakMap(); // form -> number of the newest check
  function scheduleCheck(form, session) {
    clearTimeout(checks.get(form));
    checks.set(form, setTimeout(() => checkForm(form, session), 300));
  }

  // Inline validation asks the server (POST /saves?dry_run=1): one set of rules.
  async function checkForm(form, session) {
    const body = requestBody(form, session);
    const seq = (checkSeq.get(form) || 0) + 1;
    checkSeq.set(form, seq);
    const current = () => checkSeq.get(form) === seq;
    try {
      const result = await api("POST", "/saves?dry_run=1", body);
      if (current()) showErrors(form, result.errors || {});
      return result.valid;
    } catch (error) {
      if (current()) showErrors(form, { other: error.message });
      return false;
    }
  }

  function showErrors(form, errors) {
    const target = errors.target || "";
    const other = ["container", "node", "job_id", "formats", "category", "other"]
      .map((k) => errors[k]).filter(Boolean).join(" ");
    form.querySelector('[data-error="target"]').textContent = target;
    form.querySelector('[data-error="other"]').textContent = other;
    for (const input of form.querySelectorAll("[data-field^=target]")) {
      input.setAttribute("aria-invalid", target ? "true" : "false");
    }
  }

  async function submitSave(form, session) {
    const button = form.querySelector('button[type="submit"]');
    clearTimeout(checks.get(form));
    if (!(await checkForm(form, session))) return;
    form.dataset.key = form.dataset.key || (crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`);
    button.disabled = true;
    try {
      const body = requestBody(form, session);
      const accepted = await api("POST", "/saves", body, { "Idempotency-Key": form.dataset.key });
      form.dataset.key = "";
      form.reset();
      announce(`Save job ${accepted.job_id} submitted for ${accepted.target}`);
      await refreshSaves([accepted.job_id]);
    } catch (error) {
      showErrors(form, { other: error.message });
    } finally {
      button.disabled = false;
    }
  }

  async function loadSessions() {
    try {
      const data = await api("GET", "/sessions");
      const list = $("sessions");
      list.replaceChildren();
      for (const session of data.sessions) {
        const started = session.started ? ` · started ${when(session.started)}` : "";
        list.append(el("li", { class: "session", "data-container": session.container },
          el("h3", { text: session.container }),
          el("p", { class: "meta", text: `on node ${session.node} · ${session.image}${started}` }),
          saveForm(session)));
      }
      list.append(el("li", { class: "session manual" },
        el("details", {}, el("summary", { text: "Save another container (name and node or job id)" }),
          saveForm(null))));
      const note = data.warnings && data.warnings.length ? ` (${data.warnings.join("; ")})` : "";
      setStatus("sessions-status", data.sessions.length
        ? `${data.sessions.length} running session(s)${note}`
        : `No running sessions found${note}.`);
    } catch (error) {
      setStatus("sessions-status", `Cannot list sessions: ${error.message}`, true);
    }
  }

  // ---- saves with live progress ----------------------------------------------------

  function saveItem(save) {
    const label = `${save.target} (job ${save.job_id})`;
    const progressId = `progress-${save.job_id}`;
    const state = `${save.state} · ${save.stage} · ${save.percent}%`;
    const item = el("li", { class: `save state-${save.stage}`, "data-job": save.job_id },
      el("label", { for: progressId, text: label }),
      el("progress", { id: progressId, max: "100", value: String(save.percent) }, `${save.percent}%`),
      el("p", { class: "meta", text: `${state} · node ${save.node} · submitted ${when(save.submit_time)}` }));
    if (save.bytes_total) {
      item.append(el("p", { class: "meta", text: `${humanBytes(save.bytes_done)} of ${humanBytes(save.bytes_total)}` }));
    }
    if (save.digest) item.append(el("p", { class: "meta" }, el("code", { text: save.digest })));
    if (save.save_kind) {
      const pushed = save.bytes_pushed ? ` · ${humanBytes(save.bytes_pushed)} pushed` : "";
      const why = save.full_reason ? ` (${save.full_reason})` : "";
      item.append(el("p", { class: "meta save-kind", text: `${save.save_kind}${pushed}${why}` }));
    }
    if (save.reason) item.append(el("p", { class: "error", text: save.reason }));
    if (!save.final) {
      item.append(el("button", { type: "button", class: "secondary", text: "Cancel",
        "aria-label": `Cancel save job ${save.job_id}`, onclick: () => cancelSave(save) }));
    }
    return item;
  }

  function renderSaves() {
    const ordered = [...saves.values()].sort((a, b) => Number(b.job_id) - Number(a.job_id));
    // Every active save, and the newest finished ones unless the user asks for all.
    const shown = showAllSaves ? ordered
      : ordered.filter((s, i) => !s.final || i < RECENT_SAVES);
    const items = shown.map(saveItem);
    if (shown.length < ordered.length) {
      items.push(el("li", { class: "more" }, el("button", { type: "button", class: "secondary",
        text: `Show all ${ordered.length} saves`, onclick: () => { showAllSaves = true; renderSaves(); } })));
    }
    $("saves").replaceChildren(...items);
    setStatus("saves-status", ordered.length ? "" : "No saves in the last 7 days.");
    renderUsage();
    const active = ordered.some((s) => !s.final);
    if (active && !polling) polling = setInterval(pollActive, POLL_MS);
    if (!active && polling) { clearInterval(polling); polling = null; }
  }

  async function loadSaves() {
    try {
      const data = await api("GET", "/saves");
      saves.clear();
      for (const save of data.saves) saves.set(save.job_id, save);
      renderSaves();
    } catch (error) {
      setStatus("saves-status", `Cannot list saves: ${error.message}`, true);
    }
  }

  async function refreshSaves(ids) {
    if (!ids.length) return;
    const data = await api("GET", `/saves?job_ids=${ids.map(encodeURIComponent).join(",")}`);
    let finished = false;
    for (const save of data.saves) {
      const before = saves.get(save.job_id);
      if (save.final && (!before || !before.final)) {
        finished = true;
        announce(`Save job ${save.job_id}: ${save.stage}${save.reason ? `, ${save.reason}` : ""}`);
      }
      saves.set(save.job_id, save);
    }
    renderSaves();
    if (finished) loadImages();
  }

  async function pollActive() {
    const ids = [...saves.values()].filter((s) => !s.final).map((s) => s.job_id);
    try { await refreshSaves(ids); } catch (error) { setStatus("saves-status", error.message, true); }
  }

  async function cancelSave(save) {
    if (!window.confirm(`Cancel the save of ${save.target} (job ${save.job_id})?`)) return;
    try {
      await api("DELETE", `/saves/${encodeURIComponent(save.job_id)}`);
      await refreshSaves([save.job_id]);
    } catch (error) {
      setStatus("saves-status", `Cannot cancel job ${save.job_id}: ${error.message}`, true);
    }
  }

  // ---- images ------------------------------------------------------------------------

  let images = [];

  async function copyText(text, button) {
    try {
      await navigator.clipboard.writeText(text);
    } catch (_) {
      const area = el("textarea", { class: "visually-hidden" });
      area.value = text;
      document.body.append(area);
      area.select();
      document.execCommand("copy");
      area.remove();
    }
    button.textContent = "Copied";
    announce("Pull command copied");
    setTimeout(() => { button.textContent = "Copy"; }, 1500);
  }

  function imageRow(image) {
    const name = `${image.repository}:${image.tag}`;
    const copy = el("button", { type: "button", class: "secondary", text: "Copy",
      "aria-label": `Copy the pull command of ${name}` });
    copy.addEventListener("click", () => copyText(image.pull_command, copy));
    return el("tr", { "data-image": name },
      el("th", { scope: "row" }, el("code", { text: name })),
      el("td", { text: image.format }),
      el("td", { text: image.category || "–" }),
      el("td", { text: humanBytes(image.size_bytes) }),
      el("td", { text: when(image.created) }),
      el("td", { class: "pull" }, el("code", { text: image.pull_command }), copy),
      el("td", {}, el("button", { type: "button", class: "danger", text: "Delete",
        "aria-label": `Delete ${name}`, onclick: () => deleteImage(name) })));
  }

  async function loadImages() {
    try {
      const data = await api("GET", "/images");
      images = data.images;
      $("images").replaceChildren(...images.map(imageRow));
      $("images-table").hidden = images.length === 0;
      setStatus("images-status", images.length ? "" : "No images yet.");
    } catch (error) {
      setStatus("images-status", `Cannot list images: ${error.message}`, true);
    }
    renderUsage();
  }

  async function deleteImage(name) {
    if (!window.confirm(`Delete the image ${name}? This cannot be undone.`)) return;
    try {
      await api("DELETE", `/images/${name.split("/").map(encodeURIComponent).join("/")}`);
      announce(`Deleted ${name}`);
      await loadImages();
    } catch (error) {
      setStatus("images-status", `Cannot delete ${name}: ${error.message}`, true);
    }
  }

  // ---- usage ---------------------------------------------------------------------------

  function renderUsage() {
    const all = [...saves.values()];
    const figures = {
      saves: all.length,
      succeeded: all.filter((s) => s.stage === "done").length,
      failed: all.filter((s) => s.final && s.stage !== "done").length,
      active: all.filter((s) => !s.final).length,
      images: images.length,
      bytes: humanBytes(images.reduce((sum, i) => sum + (i.size_bytes || 0), 0)),
    };
    for (const [key, value] of Object.entries(figures)) {
      document.querySelector(`[data-usage="${key}"]`).textContent = String(value);
    }
  }

  loadSessions();
  loadSaves();
  loadImages();
})();
