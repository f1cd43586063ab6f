/* Image Playground: a page for the OpenAI-compatible image server.
 *
 * Plain browser JavaScript, no build step and no dependencies. It talks to the same
 * origin it was served from: GET /readyz and /v1/models for the header, /v1/loras for
 * the adapters offered under Advanced, POST
 * /v1/images/generations (JSON) and /v1/images/edits (multipart) for the work, with
 * server-sent events read from fetch() when streaming (EventSource cannot POST).
 */
(() => {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const KEY_STORAGE = "imagePlayground.apiKey";
  const SETTINGS_STORAGE = "imagePlayground.settings";
  const PARTIAL_IMAGES = 2;
  const EXTENSIONS = { png: "png", jpeg: "jpg", webp: "webp" };
  const READY_POLL_MS = 5000;
  const NOT_READY_POLL_MS = 2000;
  const HIDDEN_POLL_MS = 15000;
  // An error event mid-stream has no HTTP status: borrow the one its code would have had.
  const STREAM_ERROR_STATUS = {
    server_overloaded: 429,
    model_loading: 503,
    out_of_memory: 503,
    server_draining: 503,
    device_error: 503,
    request_timeout: 504,
  };

  const state = {
    mode: "generate",
    busy: false,
    abort: null,
    readiness: "unknown",
    modelKnown: false,
    // Set after a 400 on `stream`: this server does not stream that endpoint.
    noStream: { generate: false, edit: false },
    edit: { file: null, width: 0, height: 0, painted: false },
    brush: { mode: "paint", drawing: false, last: null },
  };

  // ---------------------------------------------------------------- API access

  class ApiError extends Error {
    constructor(message, { status = 0, param = null, code = null, retryAfter = null } = {}) {
      super(message);
      this.status = status;
      this.param = param;
      this.code = code;
      this.retryAfter = retryAfter;
    }
  }

  function apiKey() {
    try {
      return localStorage.getItem(KEY_STORAGE) || "";
    } catch {
      return "";
    }
  }

  function authHeaders() {
    const key = apiKey();
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  async function errorFromResponse(response) {
    let error = {};
    try {
      const body = await response.json();
      if (body && typeof body.error === "object" && body.error) error = body.error;
    } catch {
      // Not JSON (a proxy's HTML page, say): fall back to the status line.
    }
    const message =
      error.message || `The server answered ${response.status} ${response.statusText || ""}`.trim();
    return new ApiError(message, {
      status: response.status,
      param: error.param ?? null,
      code: error.code ?? null,
      retryAfter: response.headers.get("Retry-After"),
    });
  }

  /** fetch() with the API key; throws ApiError for network failures and non-2xx answers. */
  async function apiFetch(path, options = {}) {
    let response;
    try {
      response = await fetch(path, { ...options, headers: { ...(options.headers || {}), ...authHeaders() } });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError("Could not reach the server. Check that it is running, then try again.");
    }
    if (response.status === 401) showApiKeyBar({ focus: true });
    if (!response.ok) throw await errorFromResponse(response);
    return response;
  }

  /** Parse a text/event-stream body into {type, data} events (data parsed as JSON). */
  async function* readEvents(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let type = "";
    let data = [];
    const dispatch = () => {
      const event = { type, text: data.join("\n") };
      type = "";
      data = [];
      return event;
    };
    for (;;) {
      const { value, done } = await reader.read();
      // At the end, blank lines flush an event the server did not terminate.
      buffer += done ? `${decoder.decode()}\n\n` : decoder.decode(value, { stream: true });
      let newline;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        let line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + 1);
        if (line.endsWith("\r")) line = line.slice(0, -1);
        if (line === "") {
          if (data.length) yield parseEvent(dispatch());
          else type = "";
          continue;
        }
        if (line.startsWith(":")) continue; // a comment or keep-alive
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") type = value;
        else if (field === "data") data.push(value);
      }
      if (done) return;
    }
  }

  function parseEvent({ type, text }) {
    let data;
    try {
      data = JSON.parse(text);
    } catch {
      throw new ApiError("The server sent an event this page could not read.");
    }
    return { type: type || (data && data.type) || "message", data };
  }

  // ---------------------------------------------------------------- server status

  const READINESS = {
    ready: ["Ready", "pill-ok"],
    loading: ["Loading model…", "pill-busy"],
    draining: ["Restarting…", "pill-busy"],
    failed: ["Model failed to load", "pill-bad"],
    fatal: ["Device error, restarting", "pill-bad"],
    unreachable: ["Server unreachable", "pill-bad"],
  };

  function setReadiness(status, reason) {
    const [label, tone] = READINESS[status] || [`Not ready (${status})`, "pill-busy"];
    const pill = $("readiness");
    pill.className = `pill ${tone}`;
    pill.dataset.state = status;
    $("readiness-text").textContent = label;
    pill.title = reason || label;

    const notices = {
      loading: ["The model is loading", "You can write your prompt now; generating works as soon as the server is ready."],
      failed: ["The model failed to load", reason || "See the server's log for the reason."],
      fatal: ["The server hit a device error", `${reason ? `${reason} ` : ""}It is restarting; this page will notice when it is back.`],
      draining: ["The server is shutting down", "Requests already running finish; new ones wait for the restart."],
      unreachable: ["The server cannot be reached", "Check that it is running; this page keeps trying."],
    };
    const notice = notices[status];
    $("server-notice").hidden = !notice;
    if (notice) {
      $("server-notice-title").textContent = notice[0];
      $("server-notice-message").textContent =
        status === "loading" && reason ? `${notice[1]} (${reason})` : notice[1];
    }
    state.readiness = status;
  }

  async function pollReadiness() {
    let status = "unreachable";
    let reason = null;
    try {
      const response = await fetch("/readyz", { headers: authHeaders(), cache: "no-store" });
      const body = await response.json().catch(() => ({}));
      status = response.ok ? "ready" : body.status || `HTTP ${response.status}`;
      reason = body.reason || null;
    } catch {
      // unreachable
    }
    const changed = status !== state.readiness;
    setReadiness(status, reason);
    if (changed || !state.modelKnown) loadModel();
    const delay = document.hidden ? HIDDEN_POLL_MS : status === "ready" ? READY_POLL_MS : NOT_READY_POLL_MS;
    setTimeout(pollReadiness, delay);
  }

  async function loadModel() {
    const label = $("model-id");
    try {
      const response = await apiFetch("/v1/models", { cache: "no-store" });
      const body = await response.json();
      const model = body.data && body.data[0];
      label.textContent = model ? model.id : "none";
      label.title = model ? model.id : "";
      state.modelKnown = Boolean(model);
    } catch (err) {
      if (err.status === 401) label.textContent = "API key needed";
      else if (!state.modelKnown) label.textContent = "unknown";
    }
  }

  // ---------------------------------------------------------------- LoRA adapters

  /** List the server's adapters (GET /v1/loras) under Advanced, keeping ticks and scales. */
  async function loadLoras() {
    let items = [];
    try {
      const body = await (await apiFetch("/v1/loras", { cache: "no-store" })).json();
      items = Array.isArray(body.data) ? body.data : [];
    } catch {
      // An older server or no key yet: offer no adapters.
    }
    const chosen = new Map(selectedLoras().map((lora) => [lora.name, lora.scale]));
    $("lora-list").replaceChildren(...items.map((item) => loraRow(item, chosen.get(item.name))));
    $("loras-field").hidden = items.length === 0;
  }

  function loraRow(item, scale) {
    const row = document.createElement("div");
    row.className = "lora-row";
    row.dataset.name = item.name;
    const label = document.createElement("label");
    label.className = "check";
    const use = document.createElement("input");
    use.type = "checkbox";
    use.className = "lora-use";
    use.checked = scale !== undefined;
    const name = document.createElement("span");
    name.textContent = item.name;
    const targets = (item.targets || []).join(", ") || "no known target";
    label.title = `${targets}; ${Math.ceil((item.size_bytes || 0) / 1024)} KiB`;
    label.append(use, name);
    const weight = document.createElement("input");
    Object.assign(weight, { type: "number", className: "lora-scale", min: "-2", max: "2", step: "0.1" });
    weight.value = String(scale ?? 1);
    weight.setAttribute("aria-label", `Scale of ${item.name}`);
    row.append(label, weight);
    return row;
  }

  function selectedLoras() {
    return [...document.querySelectorAll(".lora-row")]
      .filter((row) => row.querySelector(".lora-use").checked)
      .map((row) => ({ name: row.dataset.name, scale: Number(row.querySelector(".lora-scale").value) }));
  }

  // ---------------------------------------------------------------- API key

  function showApiKeyBar({ focus = false } = {}) {
    const bar = $("api-key-bar");
    const wasHidden = bar.hidden;
    bar.hidden = false;
    $("api-key").value = apiKey();
    if (focus && wasHidden) $("api-key").focus();
  }

  function initApiKey() {
    if (apiKey()) showApiKeyBar();
    $("api-key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const key = $("api-key").value.trim();
      try {
        if (key) localStorage.setItem(KEY_STORAGE, key);
        else localStorage.removeItem(KEY_STORAGE);
      } catch {
        // Private mode without storage: the key is still used from the field below.
      }
      hideError();
      toast(key ? "API key saved in this browser." : "API key removed.");
      state.modelKnown = false;
      loadModel();
    });
    $("api-key-forget").addEventListener("click", () => {
      try {
        localStorage.removeItem(KEY_STORAGE);
      } catch {
        // nothing stored
      }
      $("api-key").value = "";
      toast("API key removed from this browser.");
    });
  }

  function toast(text) {
    $("progress-text").textContent = text;
    $("progress-time").textContent = "";
    const progress = $("progress");
    progress.hidden = false;
    progress.classList.add("progress-idle");
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => {
      if (!state.busy) progress.hidden = true;
    }, 2500);
  }

  // ---------------------------------------------------------------- errors

  const ERROR_TITLES = {
    form: "Check the form", // caught in the page, never sent
    page: "Something went wrong in this page",
    0: "Could not reach the server",
    400: "The server did not accept the request",
    401: "This server needs an API key",
    403: "Not allowed",
    404: "Not available on this server",
    413: "The upload is too large",
    415: "The server did not accept the request",
    429: "The server is busy",
    500: "The server could not make the image",
    503: "The server is not ready",
    504: "The request took too long",
  };

  // Worth another try later: a busy, loading or restarting server, a timeout, the network.
  function retryable(err) {
    if (err.code === "model_load_failed") return false; // needs the operator, not a retry
    return [0, 429, 500, 503, 504].includes(err.status);
  }

  function describeError(err) {
    let message = err.message;
    if (err.status === 401) message += " Enter the key above, then submit again.";
    if (err.status === 413) message += " Try a smaller image (fewer pixels, or JPEG/WebP).";
    if ([429, 503, 504].includes(err.status) && retryable(err)) {
      const seconds = Number.parseInt(err.retryAfter, 10);
      message += Number.isFinite(seconds)
        ? ` Try again in about ${seconds} second${seconds === 1 ? "" : "s"}.`
        : " Try again in a moment.";
    }
    return message;
  }

  function showError(err) {
    const title = ERROR_TITLES[err.status] || (err.status >= 500 ? "Server error" : "Request failed");
    $("error-title").textContent = title;
    $("error-message").textContent = describeError(err);
    const banner = $("error");
    banner.dataset.status = String(err.status ?? "");
    $("error-retry").hidden = !retryable(err);
    banner.hidden = false;
  }

  function hideError() {
    $("error").hidden = true;
  }

  // ---------------------------------------------------------------- form values

  function numberOrNull(id) {
    const raw = $(id).value.trim();
    if (raw === "") return null;
    const value = Number(raw);
    return Number.isFinite(value) ? value : raw; // let the server explain odd input
  }

  function readForm() {
    return {
      prompt: $("prompt").value,
      negativePrompt: $("negative-prompt").value.trim(),
      size: $("size").value,
      n: Number($("n").value),
      steps: numberOrNull("steps"),
      seed: numberOrNull("seed"),
      guidance: numberOrNull("guidance"),
      format: $("format").value,
      strength: Number($("strength").value),
      stream: $("stream").checked,
      loras: selectedLoras(),
    };
  }

  function saveSettings() {
    const settings = {
      size: $("size").value,
      n: $("n").value,
      steps: $("steps").value,
      format: $("format").value,
      stream: $("stream").checked,
    };
    try {
      localStorage.setItem(SETTINGS_STORAGE, JSON.stringify(settings));
    } catch {
      // storage unavailable: settings just are not remembered
    }
  }

  function restoreSettings() {
    let settings;
    try {
      settings = JSON.parse(localStorage.getItem(SETTINGS_STORAGE) || "null");
    } catch {
      settings = null;
    }
    if (!settings) return;
    const setIfValid = (id, value) => {
      const element = $(id);
      if (value === undefined) return;
      if (element.tagName === "SELECT" && ![...element.options].some((o) => o.value === value)) return;
      element.value = value;
    };
    setIfValid("size", settings.size);
    setIfValid("n", settings.n);
    setIfValid("steps", settings.steps);
    setIfValid("format", settings.format);
    if (typeof settings.stream === "boolean") $("stream").checked = settings.stream;
  }

  // ---------------------------------------------------------------- results

  function sizeOf(text) {
    const match = /^(\d+)x(\d+)$/.exec(text || "");
    return match ? [Number(match[1]), Number(match[2])] : null;
  }

  function createRun(form, mode) {
    const run = $("run-template").content.firstElementChild.cloneNode(true);
    run.dataset.mode = mode;
    run.querySelector(".run-prompt").textContent = form.prompt;
    const meta = [];
    if (mode === "edit") meta.push("Edit");
    meta.push(form.size ? form.size.replace("x", " × ") : mode === "edit" ? "original size" : "default size");
    meta.push(form.steps === null ? "default steps" : `${form.steps} steps`);
    meta.push(form.format.toUpperCase());
    meta.push(form.seed === null ? "random seed" : `seed ${form.seed}`);
    if (form.loras.length) meta.push(form.loras.map((lora) => `${lora.name} × ${lora.scale}`).join(", "));
    run.querySelector(".run-meta").textContent = meta.join(" · ");
    const ratio = sizeOf(form.size) || (mode === "edit" ? [state.edit.width, state.edit.height] : null);
    const cards = [];
    for (let i = 0; i < form.n; i += 1) {
      const card = $("card-template").content.firstElementChild.cloneNode(true);
      card.dataset.state = "pending";
      if (ratio && ratio[0] && ratio[1]) card.style.setProperty("--ratio", `${ratio[0]} / ${ratio[1]}`);
      card.querySelector("img").alt = `Image ${i + 1} for: ${form.prompt}`;
      run.querySelector(".cards").append(card);
      cards.push(card);
    }
    run.querySelector(".cards").dataset.count = String(form.n);
    $("empty").hidden = true;
    $("gallery").prepend(run);
    return { run, cards, meta };
  }

  function dataUrl(b64, format) {
    return `data:image/${format};base64,${b64}`;
  }

  function showPartial(card, src, index) {
    const count = Number(card.dataset.partials || 0) + 1;
    card.dataset.partials = String(count);
    card.dataset.state = "partial";
    const img = card.querySelector("img");
    img.dataset.partialIndex = String(index ?? count - 1);
    setImage(img, src);
    const badge = card.querySelector(".badge");
    badge.hidden = false;
    badge.textContent = `Preview ${count}`;
    card.querySelector(".card-status").textContent = "Refining…";
  }

  function setImage(img, src) {
    img.onload = () => img.classList.toggle("pixelated", img.naturalWidth < 256);
    img.src = src;
  }

  function showFinal(card, { src, seed, format, href }) {
    const img = card.querySelector("img");
    const ext = EXTENSIONS[format] || format;
    card.dataset.seed = String(seed ?? "");
    card.dataset.state = "loading";
    img.onload = () => {
      img.classList.toggle("pixelated", img.naturalWidth < 256);
      card.dataset.state = "final";
      card.style.setProperty("--ratio", `${img.naturalWidth} / ${img.naturalHeight}`);
    };
    img.onerror = () => {
      card.dataset.state = "broken";
      card.querySelector(".card-status").textContent = "The image could not be loaded";
    };
    img.dataset.final = "true";
    delete img.dataset.partialIndex;
    img.src = src;
    card.querySelector(".badge").hidden = true;
    card.querySelector(".seed code").textContent = seed ?? "unknown";
    const link = card.querySelector("a.download");
    link.href = href || src;
    link.download = `image-${seed ?? "unknown"}.${ext}`;
    link.setAttribute("aria-label", `Download the image with seed ${seed}`);
    const useSeed = card.querySelector(".use-seed");
    useSeed.hidden = seed === undefined || seed === null;
    useSeed.onclick = () => {
      $("seed").value = String(seed);
      $("seed").focus();
    };
    card.querySelector(".edit-this").onclick = () => editFromCard(img.src, seed, format);
    img.onclick = () => openLightbox(card);
  }

  function failCards(cards, label) {
    for (const card of cards) {
      if (card.dataset.state === "final" || card.dataset.state === "loading") continue;
      card.dataset.state = "failed";
      card.querySelector(".badge").hidden = true;
      card.querySelector(".card-status").textContent = label;
    }
  }

  /** Show an image as large as the window allows (small ones scaled up, pixel-sharp). */
  function openLightbox(card) {
    const dialog = $("lightbox");
    const source = card.querySelector("img");
    const img = $("lightbox-img");
    const seed = card.dataset.seed;
    const scale = Math.min(
      (window.innerWidth * 0.94 - 40) / source.naturalWidth,
      (window.innerHeight * 0.94 - 90) / source.naturalHeight,
    );
    img.style.width = `${Math.floor(source.naturalWidth * scale)}px`;
    img.style.height = `${Math.floor(source.naturalHeight * scale)}px`;
    img.classList.toggle("pixelated", scale > 2);
    img.src = source.src;
    img.alt = source.alt;
    $("lightbox-caption").textContent = seed ? `Seed ${seed} · ${source.naturalWidth} × ${source.naturalHeight}` : "";
    const link = card.querySelector("a.download");
    $("lightbox-download").href = link.href;
    $("lightbox-download").download = link.download;
    if (typeof dialog.showModal === "function") dialog.showModal();
  }

  // ---------------------------------------------------------------- progress

  let timer = null;

  function setBusy(busy, text = "") {
    state.busy = busy;
    const submit = $("submit");
    submit.disabled = busy;
    submit.classList.toggle("is-busy", busy);
    $("cancel").hidden = !busy;
    $("controls").setAttribute("aria-busy", String(busy));
    const progress = $("progress");
    clearInterval(timer);
    clearTimeout(toast.timer);
    progress.classList.remove("progress-idle");
    if (busy) {
      const started = performance.now();
      progress.hidden = false;
      setProgress(text);
      const tick = () => {
        $("progress-time").textContent = `${((performance.now() - started) / 1000).toFixed(1)} s`;
      };
      tick();
      timer = setInterval(tick, 100);
    } else {
      progress.hidden = true;
    }
  }

  function setProgress(text) {
    $("progress-text").textContent = text;
  }

  // ---------------------------------------------------------------- submitting

  async function submit() {
    if (state.busy) return;
    hideError();
    const form = readForm();
    const mode = state.mode;
    if (!form.prompt.trim()) {
      showError(new ApiError("Write a prompt first: describe the image you want.", { status: "form" }));
      $("prompt").focus();
      return;
    }
    if (mode === "edit" && !state.edit.file) {
      showError(new ApiError("Choose an image to edit first.", { status: "form" }));
      $("edit-image").focus();
      return;
    }
    saveSettings();
    const abort = new AbortController();
    state.abort = abort;
    const { run, cards, meta } = createRun(form, mode);
    const started = performance.now();
    let note = null;
    setBusy(true, "Sending the request…");
    // On a narrow screen the results are below the form: bring the progress into view.
    if (window.matchMedia("(max-width: 880px)").matches) {
      $("progress").scrollIntoView({ behavior: "smooth", block: "start" });
    }
    try {
      const mask = mode === "edit" ? await exportMask() : null;
      let stream = form.stream && form.n === 1 && !state.noStream[mode];
      for (;;) {
        try {
          await runRequest({ form, mode, mask, stream, cards, signal: abort.signal });
          break;
        } catch (err) {
          // A server (or model) without streaming: remember it and ask again without.
          if (stream && err instanceof ApiError && err.status === 400 && ["stream", "partial_images"].includes(err.param)) {
            state.noStream[mode] = true;
            stream = false;
            setProgress("This server does not stream; waiting for the final image…");
            continue;
          }
          throw err;
        }
      }
      meta.push(`${((performance.now() - started) / 1000).toFixed(1)} s`);
      run.querySelector(".run-meta").textContent = meta.join(" · ");
    } catch (err) {
      const cancelled = err.name === "AbortError";
      failCards(cards, cancelled ? "Cancelled" : "Failed: see the message above");
      run.dataset.state = cancelled ? "cancelled" : "failed";
      // Nothing arrived: drop the empty run, the banner (or the cancel) says it all.
      if (cards.every((card) => card.dataset.state === "failed" && !card.dataset.partials)) run.remove();
      $("empty").hidden = $("gallery").children.length > 0;
      if (cancelled) note = "Cancelled. The server may still finish the work it started.";
      else showError(err instanceof ApiError ? err : new ApiError(err.message, { status: "page" }));
    } finally {
      state.abort = null;
      setBusy(false);
    }
    if (note) toast(note);
  }

  function generationBody(form, stream) {
    const body = {
      prompt: form.prompt,
      n: form.n,
      output_format: form.format,
      response_format: stream ? "b64_json" : "url",
    };
    if (form.size) body.size = form.size;
    if (form.steps !== null) body.num_inference_steps = form.steps;
    if (form.seed !== null) body.seed = form.seed;
    if (form.negativePrompt) body.negative_prompt = form.negativePrompt;
    if (form.guidance !== null) body.guidance_scale = form.guidance;
    if (form.loras.length) body.loras = form.loras;
    if (stream) {
      body.stream = true;
      body.partial_images = PARTIAL_IMAGES;
    }
    return body;
  }

  function editBody(form, stream, mask) {
    const body = new FormData();
    body.append("image", state.edit.file, state.edit.file.name || "image.png");
    if (mask) body.append("mask", mask, "mask.png");
    const fields = generationBody(form, stream);
    // A form field is text: the adapter list goes as JSON, as the API takes it.
    for (const [key, value] of Object.entries(fields)) {
      body.append(key, typeof value === "object" ? JSON.stringify(value) : String(value));
    }
    body.append("strength", String(form.strength));
    return body;
  }

  async function runRequest({ form, mode, mask, stream, cards, signal }) {
    const path = mode === "edit" ? "/v1/images/edits" : "/v1/images/generations";
    const options = { method: "POST", signal };
    if (mode === "edit") {
      options.body = editBody(form, stream, mask);
    } else {
      options.body = JSON.stringify(generationBody(form, stream));
      options.headers = { "Content-Type": "application/json" };
    }
    if (stream) options.headers = { ...(options.headers || {}), Accept: "text/event-stream" };
    setProgress(
      stream
        ? "Starting…"
        : `Generating ${form.n} image${form.n === 1 ? "" : "s"}…`,
    );
    const response = await apiFetch(path, options);
    const type = response.headers.get("Content-Type") || "";
    if (type.includes("text/event-stream")) {
      await consumeStream(response, form, cards);
    } else {
      showResponse(await response.json(), form, cards);
    }
  }

  async function consumeStream(response, form, cards) {
    let next = 0; // index of the card the next completed image goes to
    let partials = 0;
    for await (const { type, data } of readEvents(response)) {
      if (type === "error" || data.type === "error") {
        const error = data.error || {};
        throw new ApiError(error.message || "The server stopped with an error.", {
          status: STREAM_ERROR_STATUS[error.code] || 500,
          param: error.param ?? null,
          code: error.code ?? null,
        });
      }
      const card = cards[Math.min(next, cards.length - 1)];
      const format = data.output_format || form.format;
      if (type.endsWith("partial_image")) {
        partials += 1;
        showPartial(card, dataUrl(data.b64_json, format), data.partial_image_index);
        setProgress(`Preview ${partials} of ${PARTIAL_IMAGES}…`);
      } else if (type.endsWith("completed")) {
        showFinal(card, { src: dataUrl(data.b64_json, format), seed: data.seed, format });
        next += 1;
        setProgress("Finishing…");
      }
    }
    if (next === 0) throw new ApiError("The server closed the stream before the image was finished.", { status: 500 });
  }

  function showResponse(body, form, cards) {
    const items = Array.isArray(body.data) ? body.data : [];
    const format = body.output_format || form.format;
    items.forEach((item, i) => {
      const card = cards[i] || cards[cards.length - 1];
      const src = item.url || dataUrl(item.b64_json, format);
      showFinal(card, { src, seed: item.seed, format, href: src });
    });
    if (items.length < cards.length) {
      for (const card of cards.slice(items.length)) card.remove();
    }
    if (!items.length) throw new ApiError("The server answered without any image.", { status: 500 });
  }

  // ---------------------------------------------------------------- edit: image and mask painter

  /** Decode an image file, or say in the page that the browser could not. */
  async function readBitmap(file) {
    try {
      return await createImageBitmap(file);
    } catch {
      showError(new ApiError(`This browser could not read "${file.name}" as an image.`, { status: "form" }));
      return null;
    }
  }

  async function loadEditImage(file) {
    if (!file) return;
    if (!file.type.startsWith("image/")) {
      showError(new ApiError(`"${file.name}" is not an image. Choose a PNG, JPEG or WebP file.`, { status: "form" }));
      return;
    }
    const bitmap = await readBitmap(file);
    if (!bitmap) return;
    hideError();
    const { width, height } = bitmap;
    Object.assign(state.edit, { file, width, height, painted: false });
    for (const id of ["base-canvas", "mask-canvas"]) {
      const canvas = $(id);
      canvas.width = width;
      canvas.height = height;
    }
    $("base-canvas").getContext("2d").drawImage(bitmap, 0, 0);
    bitmap.close();
    $("mask-stage").style.setProperty("--ratio", `${width} / ${height}`);
    $("dropzone-empty").hidden = true;
    $("mask-editor").hidden = false;
    $("mask-tools").hidden = false;
    $("mask-hint").hidden = false;
    $("mask-hint").textContent = `${file.name || "Image"}, ${width} × ${height}. Paint over what should change; with no mask the whole image is reworked.`;
    $("dropzone").classList.add("has-image");
    updateSizeLabel();
  }

  function maskContext() {
    return $("mask-canvas").getContext("2d", { willReadFrequently: true });
  }

  function canvasPoint(event) {
    const canvas = $("mask-canvas");
    const rect = canvas.getBoundingClientRect();
    return {
      x: ((event.clientX - rect.left) / rect.width) * canvas.width,
      y: ((event.clientY - rect.top) / rect.height) * canvas.height,
      scale: canvas.width / rect.width,
    };
  }

  function strokeTo(point) {
    const context = maskContext();
    const from = state.brush.last || point;
    context.globalCompositeOperation = state.brush.mode === "erase" ? "destination-out" : "source-over";
    context.strokeStyle = "#ff1f6b";
    context.lineCap = "round";
    context.lineJoin = "round";
    context.lineWidth = Number($("brush-size").value) * point.scale;
    context.beginPath();
    context.moveTo(from.x, from.y);
    context.lineTo(point.x + 0.01, point.y);
    context.stroke();
    state.brush.last = point;
    if (state.brush.mode === "paint") state.edit.painted = true;
  }

  function moveBrushCursor(event) {
    const cursor = $("brush-cursor");
    const stage = $("mask-stage").getBoundingClientRect();
    const size = Number($("brush-size").value);
    cursor.hidden = false;
    cursor.style.width = cursor.style.height = `${size}px`;
    cursor.style.transform = `translate(${event.clientX - stage.left - size / 2}px, ${event.clientY - stage.top - size / 2}px)`;
    cursor.classList.toggle("erase", state.brush.mode === "erase");
  }

  function initPainter() {
    const canvas = $("mask-canvas");
    canvas.addEventListener("pointerdown", (event) => {
      if (event.button !== 0) return;
      event.preventDefault();
      canvas.setPointerCapture(event.pointerId);
      state.brush.drawing = true;
      state.brush.last = null;
      strokeTo(canvasPoint(event));
    });
    canvas.addEventListener("pointermove", (event) => {
      moveBrushCursor(event);
      if (state.brush.drawing) strokeTo(canvasPoint(event));
    });
    const stop = () => {
      state.brush.drawing = false;
      state.brush.last = null;
    };
    canvas.addEventListener("pointerup", stop);
    canvas.addEventListener("pointercancel", stop);
    canvas.addEventListener("pointerleave", () => {
      $("brush-cursor").hidden = true;
    });

    const setBrush = (mode) => {
      state.brush.mode = mode;
      $("brush-paint").setAttribute("aria-pressed", String(mode === "paint"));
      $("brush-erase").setAttribute("aria-pressed", String(mode === "erase"));
    };
    $("brush-paint").addEventListener("click", () => setBrush("paint"));
    $("brush-erase").addEventListener("click", () => setBrush("erase"));
    $("mask-clear").addEventListener("click", () => {
      maskContext().clearRect(0, 0, canvas.width, canvas.height);
      state.edit.painted = false;
    });
    $("edit-image").addEventListener("change", (event) => {
      loadEditImage(event.target.files[0]);
      event.target.value = "";
    });
    $("edit-mask").addEventListener("change", (event) => {
      loadMaskFile(event.target.files[0]);
      event.target.value = "";
    });

    const zone = $("dropzone");
    zone.addEventListener("dragover", (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("dragging");
      loadEditImage(event.dataTransfer.files[0]);
    });
  }

  /** Show an uploaded mask on the painter: its transparent pixels become painted ones. */
  async function loadMaskFile(file) {
    if (!file) return;
    if (!state.edit.file) {
      showError(new ApiError("Choose the image to edit before its mask.", { status: "form" }));
      return;
    }
    const bitmap = await readBitmap(file);
    if (!bitmap) return;
    const { width, height } = state.edit;
    const scratch = document.createElement("canvas");
    scratch.width = width;
    scratch.height = height;
    const scratchContext = scratch.getContext("2d", { willReadFrequently: true });
    scratchContext.drawImage(bitmap, 0, 0, width, height);
    bitmap.close();
    const source = scratchContext.getImageData(0, 0, width, height).data;
    const overlay = new ImageData(width, height);
    let transparent = 0;
    for (let i = 0; i < source.length; i += 4) {
      if (source[i + 3] < 128) {
        overlay.data.set([255, 31, 107, 255], i);
        transparent += 1;
      }
    }
    maskContext().putImageData(overlay, 0, 0);
    state.edit.painted = transparent > 0;
    hideError();
    $("mask-hint").textContent = transparent
      ? `Mask "${file.name}" loaded: the highlighted area will change. Paint or erase to adjust it.`
      : `Mask "${file.name}" has no transparent pixels, so it marks nothing to change. Paint the area instead.`;
  }

  /** Export the painted area as a PNG mask: painted pixels fully transparent, the rest opaque. */
  async function exportMask() {
    if (!state.edit.painted) return null;
    const { width, height } = state.edit;
    const painted = maskContext().getImageData(0, 0, width, height).data;
    const mask = new ImageData(width, height);
    let any = false;
    for (let i = 0; i < painted.length; i += 4) {
      if (painted[i + 3] > 0) {
        any = true; // stays (0, 0, 0, 0): edit here
      } else {
        mask.data[i] = mask.data[i + 1] = mask.data[i + 2] = mask.data[i + 3] = 255;
      }
    }
    if (!any) return null;
    const canvas = document.createElement("canvas");
    canvas.width = width;
    canvas.height = height;
    canvas.getContext("2d").putImageData(mask, 0, 0);
    return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  }

  async function editFromCard(src, seed, format) {
    try {
      const blob = await (await fetch(src)).blob();
      const ext = EXTENSIONS[format] || "png";
      const file = new File([blob], `image-${seed ?? "edit"}.${ext}`, { type: blob.type || `image/${format}` });
      setMode("edit");
      await loadEditImage(file);
      $("controls").scrollIntoView({ behavior: "smooth", block: "start" });
      $("prompt").focus();
    } catch {
      showError(new ApiError("Could not load that image into the editor.", { status: "page" }));
    }
  }

  // ---------------------------------------------------------------- mode and wiring

  function updateSizeLabel() {
    const option = $("size-default");
    if (state.mode === "edit") {
      option.textContent = state.edit.width
        ? `Same as the image (${state.edit.width} × ${state.edit.height})`
        : "Same as the image";
    } else {
      option.textContent = "Server default";
    }
  }

  function setMode(mode) {
    state.mode = mode;
    for (const tab of document.querySelectorAll(".tab")) {
      tab.setAttribute("aria-pressed", String(tab.dataset.mode === mode));
    }
    $("edit-section").hidden = mode !== "edit";
    $("submit-label").textContent = mode === "edit" ? "Edit image" : "Generate";
    $("controls").dataset.mode = mode;
    updateSizeLabel();
  }

  function init() {
    restoreSettings();
    initApiKey();
    initPainter();
    for (const tab of document.querySelectorAll(".tab")) {
      tab.addEventListener("click", () => setMode(tab.dataset.mode));
    }
    $("controls").addEventListener("submit", (event) => {
      event.preventDefault();
      submit();
    });
    document.addEventListener("keydown", (event) => {
      if ((event.ctrlKey || event.metaKey) && event.key === "Enter") {
        event.preventDefault();
        submit();
      } else if (event.key === "Escape" && state.abort && !$("lightbox").open) {
        state.abort.abort();
      }
    });
    $("cancel").addEventListener("click", () => state.abort && state.abort.abort());
    $("error-close").addEventListener("click", hideError);
    $("error-retry").addEventListener("click", () => {
      hideError();
      submit();
    });
    $("seed-clear").addEventListener("click", () => {
      $("seed").value = "";
    });
    $("strength").addEventListener("input", () => {
      $("strength-value").textContent = Number($("strength").value).toFixed(2);
    });
    $("lightbox").addEventListener("click", (event) => {
      if (event.target === $("lightbox")) $("lightbox").close();
    });
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) loadModel();
    });
    // Files dropped into LORA_DIR show up without a reload: list again on every opening.
    $("advanced").addEventListener("toggle", () => $("advanced").open && loadLoras());
    loadLoras();
    setMode("generate");
    pollReadiness();
  }

  init();
})();
