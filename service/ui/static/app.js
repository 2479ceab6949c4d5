// The /ui page: classify photos with /classify and show the served model's card from /metadata.
// Everything that comes from the service is inserted as text (textContent, createElement), never as HTML:
// class names and configs come from model files that users import.
"use strict";

(() => {
  const KEY_STORAGE = "cifar10-api-key";
  const TOP_K = 10;
  const PARALLEL = 3; // uploads in flight at once
  const PLOT_TITLES = {
    "curves.png": "Training curves",
    "confusion_matrix.png": "Confusion matrix",
    "reliability.png": "Reliability diagram (calibration)",
  };

  const $ = (id) => document.getElementById(id);
  const state = {
    model: null, // the model name sent with each image; null: the service's default
    metadata: null,
    key: "", // fallback when sessionStorage is unavailable
    keyPrompt: null,
    plotUrls: [],
    queue: [],
    running: 0,
    cardRequest: 0,
  };

  // ---- small helpers -------------------------------------------------------------------------

  function el(tag, className, ...children) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function isNumber(value) {
    return typeof value === "number" && Number.isFinite(value);
  }

  function percent(value, digits = 2) {
    return isNumber(value) ? `${(value * 100).toFixed(digits)}%` : "not recorded";
  }

  function integer(value) {
    return isNumber(value) ? Math.round(value).toLocaleString("en-US") : "not recorded";
  }

  function bytes(value) {
    if (!isNumber(value)) return "?";
    if (value < 1024) return `${value} B`;
    if (value < 1024 * 1024) return `${(value / 1024).toFixed(1)} KB`;
    return `${(value / 1024 / 1024).toFixed(1)} MB`;
  }

  function text(value) {
    if (value === null || value === undefined || value === "") return "not recorded";
    if (typeof value === "boolean") return value ? "yes" : "no";
    return typeof value === "object" ? JSON.stringify(value) : String(value);
  }

  function fillFacts(dl, facts) {
    dl.replaceChildren();
    for (const [term, value] of facts) {
      if (value === undefined) continue;
      dl.append(el("dt", "", term), el("dd", "", text(value)));
    }
  }

  // ---- the API key ---------------------------------------------------------------------------

  function currentKey() {
    try {
      return sessionStorage.getItem(KEY_STORAGE) || state.key;
    } catch {
      return state.key;
    }
  }

  function storeKey(key) {
    state.key = key;
    try {
      if (key) sessionStorage.setItem(KEY_STORAGE, key);
      else sessionStorage.removeItem(KEY_STORAGE);
    } catch {
      // storage disabled: the key lives in this page only
    }
    $("key-state").hidden = !key;
  }

  // One form for every request that met a 401; resolves with the key, rejects on cancel.
  function askKey(message) {
    if (!state.keyPrompt) {
      state.keyPrompt = new Promise((resolve, reject) => openKeyDialog(message, resolve, reject));
    }
    return state.keyPrompt;
  }

  function openKeyDialog(message, resolve, reject) {
    const dialog = $("key-dialog");
    const form = $("key-form");
    const input = $("key-input");
    $("key-message").textContent = message;
    input.value = "";
    const finish = (key) => {
      form.removeEventListener("submit", onSubmit);
      dialog.removeEventListener("cancel", onCancel);
      $("key-cancel").removeEventListener("click", onCancel);
      dialog.close();
      state.keyPrompt = null;
      if (key) {
        storeKey(key);
        resolve(key);
      } else {
        reject(new Error(message));
      }
    };
    const onSubmit = (event) => {
      event.preventDefault();
      const key = input.value.trim();
      if (/^[\x21-\x7e]+$/.test(key)) finish(key);
      else $("key-message").textContent = "The key holds printable ASCII characters only, without spaces.";
    };
    const onCancel = (event) => {
      event.preventDefault();
      finish("");
    };
    form.addEventListener("submit", onSubmit);
    dialog.addEventListener("cancel", onCancel);
    $("key-cancel").addEventListener("click", onCancel);
    dialog.showModal();
    input.focus();
  }

  // fetch() with the key; on a 401 the page asks for the key (once for all requests) and tries again.
  async function request(url, options = {}) {
    for (;;) {
      const key = currentKey();
      const headers = new Headers(options.headers || {});
      if (key) headers.set("Authorization", `Bearer ${key}`);
      const response = await fetch(url, { ...options, headers, credentials: "same-origin" });
      if (response.status !== 401) return response;
      if (currentKey() !== key) continue; // a new key was entered meanwhile
      const message = await errorMessage(response);
      if (key) storeKey("");
      await askKey(message);
    }
  }

  // The service's one-line `error`, or the status and the first line of whatever came back.
  async function errorMessage(response) {
    let body = "";
    try {
      body = await response.text();
    } catch {
      // the body could not be read: the status says enough
    }
    try {
      const parsed = JSON.parse(body);
      if (parsed && typeof parsed.error === "string") return parsed.error;
    } catch {
      // not JSON
    }
    const line = body.trim().split("\n")[0].slice(0, 200);
    return `HTTP ${response.status}${line ? `: ${line}` : ""}`;
  }

  function failureMessage(error, file) {
    const limit = state.metadata?.limits?.max_body_bytes;
    if (file && isNumber(limit) && file.size > limit) {
      return `the file is ${file.size} bytes, over the service's limit of ${limit} bytes per request`;
    }
    return `no answer from the service (${error && error.message ? error.message : error})`;
  }

  // ---- models and the card -------------------------------------------------------------------

  async function loadModels() {
    let index = [];
    try {
      const response = await request("v2/repository/index");
      if (response.ok) index = await response.json();
    } catch {
      index = []; // no selector; the card says what went wrong
    }
    const ready = Array.isArray(index)
      ? index.filter((m) => m && m.state === "READY" && typeof m.name === "string")
      : [];
    const select = $("model");
    select.replaceChildren(...ready.map((m) => {
      const option = el("option", "", m.name); // the card shows the version
      option.value = m.name;
      return option;
    }));
    $("model-choice").hidden = ready.length < 2;
    state.model = ready.length > 1 ? ready[0].name : null;
  }

  async function loadCard() {
    const ticket = ++state.cardRequest;
    const status = $("card-status");
    status.textContent = "Loading…";
    status.className = "muted";
    status.hidden = false;
    try {
      const url = state.model ? `metadata?model=${encodeURIComponent(state.model)}` : "metadata";
      const response = await request(url);
      if (!response.ok) throw new Error(await errorMessage(response));
      const metadata = await response.json();
      if (ticket !== state.cardRequest) return;
      state.metadata = metadata;
      renderCard(metadata);
      status.hidden = true;
      $("card-body").hidden = false;
    } catch (error) {
      if (ticket !== state.cardRequest) return;
      status.replaceChildren(el("span", "", error.message || String(error)), " ", retryButton());
      status.className = "error";
      $("card-body").hidden = true;
    }
  }

  function retryButton() {
    const button = el("button", "button", "Try again");
    button.type = "button";
    button.addEventListener("click", () => start());
    return button;
  }

  function renderCard(meta) {
    const metrics = meta.metrics || {};
    $("card-tag").textContent = text(meta.tag);
    $("card-accuracy").textContent = percent(metrics.test_accuracy);
    $("card-architecture").textContent = text(meta.architecture);
    $("card-parameters").textContent = integer(meta.parameters);
    if (Array.isArray(meta.class_names)) $("class-list").textContent = meta.class_names.map(String).join(", ");
    fillFacts($("card-metrics"), [
      ["Test accuracy, one view", isNumber(metrics.test_accuracy_single_view) ? percent(metrics.test_accuracy_single_view) : undefined],
      ["Test loss", isNumber(metrics.test_loss) ? metrics.test_loss.toFixed(4) : undefined],
      ["Best validation accuracy", isNumber(metrics.best_val_accuracy) ? percent(metrics.best_val_accuracy) : undefined],
      ["Train accuracy", isNumber(metrics.train_accuracy) ? percent(metrics.train_accuracy) : undefined],
      ["Epochs", metrics.epochs_run],
      ["Training time", isNumber(meta.training_time_s) ? `${Math.round(meta.training_time_s)} s` : undefined],
    ]);
    renderPerClass(meta.per_class);
    renderCalibration(meta);
    renderPlots(meta.plots);
    renderServing(meta);
    renderInput(meta);
  }

  function renderPerClass(perClass) {
    const entries = perClass && typeof perClass === "object" ? Object.entries(perClass) : [];
    const rows = entries.map(([name, s]) => {
      const row = el("tr", "", el("th", "", name));
      row.firstChild.scope = "row";
      for (const key of ["precision", "recall", "f1"]) row.append(el("td", "", isNumber(s?.[key]) ? s[key].toFixed(3) : "–"));
      row.append(el("td", "", integer(s?.support)));
      return row;
    });
    $("per-class").tBodies[0].replaceChildren(...rows);
    $("per-class").hidden = rows.length === 0;
    $("per-class-none").hidden = rows.length > 0;
  }

  // The card's calibration and the threshold this server applies (CIFAR10_OOD_THRESHOLD or the card's).
  function renderCalibration(meta) {
    const calibration = meta.calibration && typeof meta.calibration === "object" ? meta.calibration : null;
    const test = calibration?.test || {};
    const threshold = isNumber(meta.ood_threshold) ? meta.ood_threshold : calibration?.threshold;
    fillFacts($("card-calibration"), calibration ? [
      ["Temperature", isNumber(calibration.temperature) ? calibration.temperature.toFixed(3) : undefined],
      ["Out-of-distribution score", calibration.score],
      ["Flagged below", isNumber(threshold) ? threshold.toFixed(4) : undefined],
      ["Card's threshold", isNumber(calibration.threshold) && threshold !== calibration.threshold
        ? calibration.threshold.toFixed(4) : undefined],
      ["Validation images flagged", isNumber(calibration.val_flag_rate)
        ? `${percent(calibration.val_flag_rate, 1)} of ${integer(calibration.val_size)}` : undefined],
      ["Test ECE before → after", isNumber(test.ece_before) ? `${percent(test.ece_before)} → ${percent(test.ece_after)}` : undefined],
      ["Test NLL before → after", isNumber(test.nll_before) ? `${test.nll_before.toFixed(4)} → ${test.nll_after.toFixed(4)}` : undefined],
      ["Test images flagged", isNumber(test.flag_rate) ? percent(test.flag_rate, 1) : undefined],
    ] : []);
    $("card-calibration").hidden = !calibration;
    $("calibration-none").hidden = Boolean(calibration);
  }

  function renderServing(meta) {
    const batching = meta.batching || {};
    const limits = meta.limits || {};
    fillFacts($("card-serving"), [
      ["Backend", meta.backend],
      ["Device", meta.device],
      ["Max batch size", batching.max_batch_size],
      ["Max batch wait", isNumber(batching.max_latency_ms) ? `${batching.max_latency_ms} ms` : batching.max_latency_ms],
      ["Max files per batch request", batching.max_batch_files],
      ["Workers", batching.workers],
      ["Max upload", isNumber(limits.max_body_bytes) ? bytes(limits.max_body_bytes) : undefined],
      ["Max pixels per image", isNumber(limits.max_image_pixels) ? integer(limits.max_image_pixels) : undefined],
    ]);
  }

  function renderInput(meta) {
    const data = meta.data || {};
    fillFacts($("card-input"), [
      ["Created", meta.creation_time],
      ["Input", Array.isArray(meta.input_shape) ? `${meta.input_shape.join("×")} ${text(meta.input_dtype)}` : undefined],
      ["Preprocessing", meta.preprocessing],
      ["Input scaling", meta.input_scaling],
      ["Flip TTA", meta.flip_tta],
      ["Translate TTA", meta.translate_tta],
      ["Data", data.source],
      ["Train / val / test images", "train_size" in data ? `${data.train_size} / ${data.val_size} / ${data.test_size}` : undefined],
      ["Frameworks", meta.framework_versions && Object.keys(meta.framework_versions).length
        ? Object.entries(meta.framework_versions).map(([k, v]) => `${k} ${v}`).join(", ") : undefined],
    ]);
    $("card-config").textContent = JSON.stringify(meta.config || {}, null, 2);
  }

  // ---- plots: fetched with the key, shown through blob URLs ----------------------------------

  function renderPlots(plots) {
    for (const url of state.plotUrls) URL.revokeObjectURL(url);
    state.plotUrls = [];
    const entries = plots && typeof plots === "object" ? Object.entries(plots) : [];
    const figures = entries.map(([file, path]) => plotFigure(String(file), String(path)));
    $("plots").replaceChildren(...figures);
    $("plots-none").hidden = figures.length > 0;
  }

  function plotFigure(file, path) {
    const figure = el("figure", "plot");
    const caption = el("figcaption", "", PLOT_TITLES[file] || file);
    figure.append(caption);
    const url = new URL(path, location.href);
    if (url.origin !== location.origin) { // the page loads nothing from elsewhere
      figure.append(el("p", "error", `not shown: ${file} is not on this service`));
      return figure;
    }
    loadPlot(figure, url, file);
    return figure;
  }

  async function loadPlot(figure, url, file) {
    const note = el("p", "muted", "Loading…");
    figure.append(note);
    try {
      const response = await request(url.href);
      if (!response.ok) throw new Error(await errorMessage(response));
      const blob = await response.blob();
      if (!blob.type.startsWith("image/")) throw new Error(`not an image (${blob.type || "no type"})`);
      const blobUrl = URL.createObjectURL(blob);
      state.plotUrls.push(blobUrl);
      const link = el("a");
      link.href = currentKey() ? blobUrl : url.href;
      link.target = "_blank";
      link.rel = "noopener";
      const img = el("img");
      img.alt = `${PLOT_TITLES[file] || file} of the run that produced this model`;
      img.src = blobUrl;
      link.append(img);
      note.replaceWith(link);
    } catch (error) {
      note.textContent = `${file}: ${error.message || error}`;
      note.className = "error";
    }
  }

  // ---- photos --------------------------------------------------------------------------------

  function addFiles(fileList) {
    const items = Array.from(fileList || []).filter((f) => f instanceof File).map(createResult);
    $("results").prepend(...items.map((item) => item.li)); // the newest files first, in their order
    state.queue.push(...items);
    $("clear").hidden = $("results").children.length === 0;
    pump();
  }

  function pump() {
    while (state.running < PARALLEL && state.queue.length) {
      const item = state.queue.shift();
      state.running += 1;
      classify(item).finally(() => {
        state.running -= 1;
        pump();
      });
    }
  }

  function createResult(file) {
    const li = el("li", "result");
    li.dataset.state = "pending";
    const name = el("span", "file-name", file.name || "pasted image");
    const head = el("p", "file", name, el("span", "muted", ` · ${file.type || "unknown type"} · ${bytes(file.size)}`));
    const sent = el("figure", "sent");
    const small = el("figure", "small");
    const canvas = el("canvas");
    canvas.width = 32;
    canvas.height = 32;
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", "the photo at 32×32 pixels, enlarged");
    const img = el("img");
    img.alt = `${file.name || "pasted image"} as sent`;
    small.append(canvas, el("figcaption", "", "32×32, about as the model sees it"));
    sent.append(img, el("figcaption", "", "as sent"));
    const answer = el("div", "answer", el("p", "status muted", "Waiting…"));
    const pictures = el("div", "pictures", sent, small);
    li.append(head, pictures, answer);
    const item = { file, li, answer, url: URL.createObjectURL(file) };
    img.addEventListener("load", () => drawSmall(img, canvas), { once: true });
    img.addEventListener("error", () => previewFailed(pictures), { once: true });
    img.src = item.url;
    li.dataset.objectUrl = item.url;
    return item;
  }

  function previewFailed(pictures) {
    pictures.replaceChildren(el("p", "muted note", "No preview: this browser cannot show this file."));
  }

  // Downscale in halving steps (less aliasing), then to 32x32 over white, as the service does
  // with Pillow (Lanczos, transparency over white): close, but not the exact pixels it uses.
  function drawSmall(img, canvas) {
    let source = img;
    let width = img.naturalWidth;
    let height = img.naturalHeight;
    if (!width || !height) return;
    while (width > 64 || height > 64) {
      width = Math.max(32, Math.ceil(width / 2));
      height = Math.max(32, Math.ceil(height / 2));
      const step = document.createElement("canvas");
      step.width = width;
      step.height = height;
      const context = step.getContext("2d");
      context.imageSmoothingQuality = "high";
      context.drawImage(source, 0, 0, width, height);
      source = step;
    }
    const context = canvas.getContext("2d");
    context.fillStyle = "#fff";
    context.fillRect(0, 0, 32, 32);
    context.imageSmoothingQuality = "high";
    context.drawImage(source, 0, 0, 32, 32);
  }

  async function classify(item) {
    setStatus(item, "Classifying…");
    const form = new FormData();
    form.append("image", item.file, item.file.name || "pasted-image");
    form.append("top_k", String(TOP_K));
    if (state.model) form.append("model", state.model);
    try {
      const response = await request("classify", { method: "POST", body: form });
      if (!response.ok) {
        showError(item, await errorMessage(response));
        return;
      }
      showAnswer(item, await response.json());
    } catch (error) {
      showError(item, failureMessage(error, item.file));
    }
  }

  function setStatus(item, message) {
    item.answer.replaceChildren(el("p", "status muted", message));
  }

  function showError(item, message) {
    item.li.dataset.state = "error";
    item.answer.replaceChildren(el("p", "error", message));
  }

  function showAnswer(item, answer) {
    if (!answer || typeof answer.label !== "string" || !Array.isArray(answer.top_k)) {
      showError(item, "the service answered something that is not a classification");
      return;
    }
    item.li.dataset.state = "done";
    const label = el("p", "verdict", el("span", "label", answer.label), " ",
      el("span", "confidence", percent(answer.confidence, 1)));
    const bars = el("ol", "bars");
    for (const p of answer.top_k) bars.append(bar(p));
    item.li.dataset.inDistribution = String(answer.in_distribution ?? "unknown");
    item.answer.replaceChildren(label, outOfDistribution(answer), bars,
      el("p", "muted model-tag", `model ${text(answer.model)}`));
  }

  // Says plainly when the photo is probably none of the model's classes; the label is then only a guess.
  function outOfDistribution(answer) {
    if (typeof answer.in_distribution !== "boolean") {
      return el("p", "ood muted", "This model is not calibrated: it cannot tell when a photo is none of its classes.");
    }
    const meta = state.metadata && state.metadata.tag === answer.model ? state.metadata : null;
    const threshold = meta && isNumber(meta.ood_threshold) ? ` (threshold ${meta.ood_threshold.toFixed(3)})` : "";
    const score = isNumber(answer.in_distribution_score) ? `score ${answer.in_distribution_score.toFixed(3)}${threshold}` : "";
    if (answer.in_distribution) return el("p", "ood muted", `Looks like the photos it was trained on; ${score}.`);
    const count = meta && Array.isArray(meta.class_names) ? meta.class_names.length : 10;
    const classes = count === 10 ? "ten" : String(count);
    const warning = el("p", "ood warning", el("strong", "", `Probably none of the ${classes} classes.`),
      ` This photo does not look like what the model was trained on, so the label below is only its closest guess; ${score}.`);
    warning.setAttribute("role", "status");
    return warning;
  }

  function bar(prediction) {
    const probability = isNumber(prediction?.probability) ? Math.min(Math.max(prediction.probability, 0), 1) : 0;
    const fill = el("span", "fill");
    fill.style.width = `${(probability * 100).toFixed(2)}%`;
    const track = el("span", "track", fill);
    track.setAttribute("aria-hidden", "true");
    return el("li", "", el("span", "name", text(prediction?.label)), track, el("span", "pct", percent(probability, 1)));
  }

  function clearResults() {
    state.queue.length = 0;
    for (const li of $("results").children) URL.revokeObjectURL(li.dataset.objectUrl);
    $("results").replaceChildren();
    $("clear").hidden = true;
    $("files").focus();
  }

  // ---- choosing, dropping and pasting --------------------------------------------------------

  function hasFiles(event) {
    return Array.from(event.dataTransfer?.types || []).includes("Files");
  }

  function wireInputs() {
    const input = $("files");
    input.addEventListener("change", () => {
      addFiles(input.files);
      input.value = ""; // the same photo can be chosen again
    });
    document.addEventListener("dragover", (event) => {
      if (!hasFiles(event)) return;
      event.preventDefault();
      document.body.classList.add("dragging");
    });
    document.addEventListener("dragleave", (event) => {
      if (!event.relatedTarget) document.body.classList.remove("dragging");
    });
    document.addEventListener("drop", (event) => {
      document.body.classList.remove("dragging");
      if (!hasFiles(event)) return;
      event.preventDefault();
      addFiles(event.dataTransfer.files);
    });
    document.addEventListener("paste", (event) => {
      const files = Array.from(event.clipboardData?.items || [])
        .filter((item) => item.kind === "file")
        .map((item) => item.getAsFile());
      if (files.length) {
        event.preventDefault();
        addFiles(files);
      }
    });
    $("clear").addEventListener("click", clearResults);
    $("model").addEventListener("change", () => {
      state.model = $("model").value || null;
      loadCard();
    });
    $("forget-key").addEventListener("click", () => storeKey(""));
  }

  async function start() {
    await loadModels();
    await loadCard();
  }

  storeKey(currentKey());
  wireInputs();
  start();
})();
