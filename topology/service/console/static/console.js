// stepchain console: the one small script. The server renders every page and fragment; this
// keeps the token, sends the API writes with it, swaps fragments in and refreshes Live.
"use strict";

const TOKEN_KEY = "stepchain.token";

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

function authHeaders(extra) {
  const headers = Object.assign({}, extra || {});
  if (token()) headers["Authorization"] = "Bearer " + token();
  return headers;
}

function flash(message) {
  const box = document.getElementById("flash");
  if (box) box.textContent = message || "";
}

// ?token=... once (as Jupyter prints it): keep it for this tab, then drop it from the address.
function adoptTokenFromUrl() {
  const url = new URL(window.location.href);
  const given = url.searchParams.get("token");
  if (given) {
    sessionStorage.setItem(TOKEN_KEY, given);
    url.searchParams.delete("token");
    window.history.replaceState(null, "", url.pathname + url.search + url.hash);
  }
}

function showTokenState() {
  const state = document.getElementById("token-state");
  if (state) state.textContent = token() ? "token set" : "no token: reads only";
}

function setupToken() {
  const form = document.getElementById("token-form");
  if (!form) return;
  const input = document.getElementById("token-input");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (input && input.value.trim()) {
      sessionStorage.setItem(TOKEN_KEY, input.value.trim());
      input.value = "";
      flash("");
    }
    showTokenState();
  });
  const forget = document.getElementById("token-forget");
  if (forget) forget.addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showTokenState();
  });
  showTokenState();
}

function needToken(reply) {
  if (reply.status !== 401) return false;
  flash("This needs the service's token: paste the token printed by `stepchain topology serve` "
        + "into the Token box at the top (or open the URL it printed with ?token=).");
  const input = document.getElementById("token-input");
  if (input) input.focus();
  return true;
}

function escapeHtml(text) {
  const div = document.createElement("div");
  div.textContent = String(text);
  return div.innerHTML;
}

async function refreshPipelines() {
  const box = document.getElementById("pipelines");
  if (!box) return;
  const reply = await fetch("/console/fragments/pipelines");
  if (reply.ok) box.innerHTML = await reply.text();
}

// -- pipeline JSON editor: validate / create / replace -----------------------------------------

async function submitSpec(form, action) {
  const result = form.querySelector(".result");
  const text = form.querySelector("textarea[name=spec]").value;
  let spec;
  try {
    spec = JSON.parse(text);
  } catch (err) {
    result.innerHTML = await annotated(text, []);
    const first = result.querySelector(".line.error");
    if (first) first.scrollIntoView({block: "center"});
    return;
  }
  const strict = form.querySelector("input[name=strict]").checked;
  const query = new URLSearchParams();
  if (action === "validate") query.set("dry_run", "true");
  if (strict) query.set("strict", "true");
  let method = "POST";
  let path = "/pipeline";
  if (form.dataset.mode === "replace") {
    method = "PUT";
    path = "/pipeline/" + encodeURIComponent(form.dataset.pipeline);
  }
  result.innerHTML = "<p class='muted'>" + (action === "validate" ? "validating" : "applying")
    + "&hellip; (starting step processes can take a few seconds)</p>";
  const reply = await fetch(path + (query.toString() ? "?" + query : ""), {
    method, headers: authHeaders({"Content-Type": "application/json"}),
    body: JSON.stringify(spec),
  });
  let body = {};
  try { body = await reply.json(); } catch (err) { body = {detail: reply.statusText}; }
  if (needToken(reply)) { result.innerHTML = "<p class='err-box'>401: the token is missing or wrong</p>"; return; }
  if (reply.status === 422) {
    result.innerHTML = "<p class='err-box'>The pipeline is not valid: each error is shown "
      + "next to the field it names.</p>" + await annotated(text, body.detail || []);
    const first = result.querySelector(".line.error");
    if (first) first.scrollIntoView({block: "center"});
    return;
  }
  if (!reply.ok) {
    result.innerHTML = "<p class='err-box'>" + reply.status + ": "
      + escapeHtml(typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail))
      + "</p>";
    return;
  }
  const warnings = (body.warnings || []).map((w) => "<li>" + escapeHtml(w) + "</li>").join("");
  let html;
  if (action === "validate") {
    html = "<p class='ok-box'>Valid: pipeline <strong>" + escapeHtml(body.pipeline_id)
      + "</strong> would create " + (body.manifests || []).length + " objects.</p>";
  } else {
    html = "<p class='ok-box'>Pipeline <strong>" + escapeHtml(body.pipeline_id) + "</strong> "
      + (body.created ? "created" : "updated") + "; entry step at <code>"
      + escapeHtml(body.entrypoint) + "</code>. <a href='/console/pipelines/"
      + encodeURIComponent(body.pipeline_id) + "'>Open it</a></p>";
  }
  if (warnings) html += "<div class='warn-box'>Warnings:<ul class='warnings'>" + warnings + "</ul></div>";
  result.innerHTML = html;
  if (action !== "validate") refreshPipelines();
}

async function annotated(text, errors) {
  const reply = await fetch("/console/annotate", {
    method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({text, errors}),
  });
  return reply.ok ? await reply.text() : "<p class='err-box'>" + escapeHtml(JSON.stringify(errors)) + "</p>";
}

function setupEditors() {
  for (const form of document.querySelectorAll("form.editor")) {
    const file = form.querySelector("input[type=file]");
    file.addEventListener("change", () => {
      if (!file.files.length) return;
      const reader = new FileReader();
      reader.onload = () => { form.querySelector("textarea[name=spec]").value = reader.result; };
      reader.readAsText(file.files[0]);
    });
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      submitSpec(form, form.dataset.mode === "replace" ? "replace" : "create");
    });
    form.querySelector("[data-action=validate]").addEventListener("click", () => submitSpec(form, "validate"));
  }
}

// -- delete ------------------------------------------------------------------------------------

function setupDelete() {
  document.addEventListener("click", async (event) => {
    const button = event.target.closest("[data-delete]");
    if (!button) return;
    const id = button.dataset.delete;
    if (!window.confirm("Delete pipeline " + id + " and stop its steps?")) return;
    const reply = await fetch("/pipeline/" + encodeURIComponent(id), {method: "DELETE", headers: authHeaders()});
    if (needToken(reply)) return;
    if (!reply.ok) { flash("DELETE answered " + reply.status + ": " + (await reply.text())); return; }
    flash("Pipeline " + id + " deleted.");
    if (button.dataset.after) { window.location.href = button.dataset.after; return; }
    refreshPipelines();
  });
}

// -- run ---------------------------------------------------------------------------------------

function setupRun() {
  const form = document.getElementById("run-form");
  if (!form) return;
  const image = form.querySelector("input[name=image]");
  image.addEventListener("change", () => {
    // An uploaded photo replaces the sample choice.
    for (const radio of form.querySelectorAll("input[name=sample]")) radio.checked = false;
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    for (const slot of form.querySelectorAll("[data-error-for]")) slot.textContent = "";
    const state = document.getElementById("run-state");
    const data = new FormData(form);
    if (!image.files.length) data.delete("image");
    state.textContent = "running…";
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const reply = await fetch("/console/pipelines/" + encodeURIComponent(form.dataset.pipeline) + "/run",
                                {method: "POST", headers: authHeaders(), body: data});
      if (needToken(reply)) { state.textContent = "needs the token"; return; }
      const html = await reply.text();
      if (!reply.ok) {
        const holder = document.createElement("div");
        holder.innerHTML = html;
        const error = holder.querySelector("[data-field]");
        const field = error ? error.dataset.field : "pipeline";
        const slot = form.querySelector("[data-error-for='" + field + "']")
          || form.querySelector("[data-error-for=pipeline]");
        slot.textContent = error ? error.textContent : reply.status + " " + reply.statusText;
        state.textContent = "";
        return;
      }
      document.getElementById("run-result").innerHTML = html;
      state.textContent = "done";
    } catch (err) {
      state.textContent = "failed: " + err;
    } finally {
      button.disabled = false;
    }
  });
}

// -- live --------------------------------------------------------------------------------------

function setupLive() {
  const section = document.getElementById("live");
  if (!section) return;
  const body = document.getElementById("live-body");
  const url = "/console/pipelines/" + encodeURIComponent(section.dataset.pipeline) + "/live";
  let busy = false;
  async function tick() {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const reply = await fetch(url);
      if (reply.ok) {
        body.innerHTML = await reply.text();
        // The fragment brings the graph and the pipeline's state as the steps see them now:
        // they replace the ones drawn when the page loaded (a broken hop turns red live).
        for (const [from, to] of [["[data-live-graph]", ".graph-wrap"],
                                  ["[data-live-state]", "#pipeline-state"]]) {
          const fresh = body.querySelector(from);
          const target = document.querySelector(to);
          if (fresh && target) target.innerHTML = fresh.innerHTML;
          if (fresh) fresh.remove();
        }
      }
      else if (reply.status === 404) body.innerHTML = "<p class='muted'>the pipeline is gone</p>";
    } catch (err) {
      body.innerHTML = "<p class='err-box'>cannot reach the service: " + escapeHtml(err) + "</p>";
    } finally {
      busy = false;
    }
  }
  tick();
  window.setInterval(tick, 2000);
}

function setupJobs() {
  const body = document.getElementById("jobs-body");
  if (!body) return;
  let busy = false;
  async function tick() {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const reply = await fetch("/console/fragments/jobs");
      if (reply.ok) body.innerHTML = await reply.text();
    } catch (err) {
      body.innerHTML = "<p class='err-box'>cannot reach the service: " + escapeHtml(err) + "</p>";
    } finally {
      busy = false;
    }
  }
  window.setInterval(tick, 2000);
}

document.addEventListener("DOMContentLoaded", () => {
  adoptTokenFromUrl();
  setupToken();
  setupEditors();
  setupDelete();
  setupRun();
  setupLive();
  setupJobs();
});
