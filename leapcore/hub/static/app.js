// The hub's web page (leapcore.hub.web): plain DOM, no framework, no build step.
// Text from the hub is only ever set with textContent (never parsed as HTML).
"use strict";

(function () {
  var csrf = "";
  var events = null;
  var retry = null;
  var keyTimer = null;
  var panelKey = "";
  var keepaliveMs = 30000;

  function $(id) { return document.getElementById(id); }
  function show(id, on) { $(id).hidden = !on; }

  function api(method, path, body, type) {
    // Every POST carries the CSRF header (before sign-in, any value: a cross-site page
    // cannot add a custom header without a preflight the hub never grants).
    var headers = { "X-Leapcore-CSRF": csrf || "sign-in" };
    if (body !== undefined) { headers["Content-Type"] = type || "application/json"; }
    return fetch(path, {
      method: method, headers: headers, body: body,
      credentials: "same-origin", cache: "no-store", redirect: "error"
    }).then(function (r) {
      return r.text().then(function (text) {
        var data = null;
        if (text) { try { data = JSON.parse(text); } catch (e) { data = { error: text }; } }
        return { status: r.status, data: data };
      });
    });
  }

  // -- signing in and out ----------------------------------------------------------------

  function signedOut() {
    csrf = "";
    stopEvents();
    closePanel();
    $("who").textContent = "";
    document.body.classList.remove("admin");
    show("fleet", false);
    show("sign-out", false);
    show("sign-in", true);
    $("token").focus();
  }

  function signedIn(s) {
    csrf = s.csrf;
    keepaliveMs = (s.regkey_keepalive || 30) * 1000;
    $("who").textContent = s.user + (s.admin ? " (administrator)" : "");
    document.body.classList.toggle("admin", !!s.admin);
    $("sign-in-error").textContent = "";
    show("sign-in", false);
    show("sign-out", true);
    show("fleet", true);
    startEvents();
  }

  function signIn(e) {
    e.preventDefault();
    var body = new URLSearchParams({ token: $("token").value }).toString();
    $("token").value = "";
    api("POST", "/api/sign-in", body, "application/x-www-form-urlencoded").then(function (r) {
      if (r.status === 200) { signedIn(r.data); return; }
      $("sign-in-error").textContent = (r.data && r.data.error) || ("sign-in failed (" + r.status + ")");
    }, function () { $("sign-in-error").textContent = "the hub did not answer"; });
  }

  function signOut() {
    api("POST", "/api/sign-out").then(signedOut, signedOut);
  }

  // -- the live worker list --------------------------------------------------------------

  function startEvents() {
    stopEvents();
    events = new EventSource("/api/events");
    events.addEventListener("workers", function (e) { render(JSON.parse(e.data)); });
    events.onopen = function () { setLive("live", true); };
    events.onerror = function () {
      setLive("reconnecting\u2026", false);
      if (events && events.readyState === EventSource.CLOSED) {
        // The hub refused the stream (signed out, or too many streams): ask why.
        api("GET", "/api/session").then(function (r) {
          if (r.status === 401) { signedOut(); return; }
          retry = setTimeout(startEvents, 3000);
        }, function () { retry = setTimeout(startEvents, 3000); });
      }
    };
  }

  function stopEvents() {
    if (retry) { clearTimeout(retry); retry = null; }
    if (events) { events.close(); events = null; }
    setLive("", false);
  }

  function setLive(text, on) {
    $("live").textContent = text;
    $("live").classList.toggle("on", on);
  }

  function cell(row, text, cls) {
    var td = document.createElement("td");
    if (cls) { td.className = cls; }
    if (text !== undefined && text !== null) { td.textContent = text; }
    row.appendChild(td);
    return td;
  }

  function tags(td, items) {
    items.forEach(function (item) {
      var span = document.createElement("span");
      span.className = "tag";
      span.textContent = item;
      td.appendChild(span);
    });
  }

  function seen(w) {
    if (w.online) { return "now"; }
    if (!w.last_seen_at) { return "never"; }
    return new Date(w.last_seen_at).toLocaleString();
  }

  function render(list) {
    var rows = $("worker-rows");
    var fresh = document.createDocumentFragment();
    list.workers.forEach(function (w) {
      var tr = document.createElement("tr");
      tr.dataset.id = w.id;
      tr.dataset.name = w.name;
      tr.dataset.online = w.online ? "yes" : "no";
      var dot = document.createElement("span");
      dot.className = "dot" + (w.online ? " online" : "");
      dot.title = w.online ? "online" : "offline";
      cell(tr).appendChild(dot);
      cell(tr, w.name, "name");
      cell(tr, w.owner || "", "owner-col");
      cell(tr, w.version);
      cell(tr, [w.os, w.arch].filter(Boolean).join("/") || "\u2014");
      tags(cell(tr), Object.keys(w.labels).sort().map(function (k) { return k + "=" + w.labels[k]; }));
      tags(cell(tr), w.capabilities);
      cell(tr, seen(w), "seen");
      cell(tr, w.fingerprint || "\u2014", "fp");
      fresh.appendChild(tr);
    });
    rows.replaceChildren(fresh);
    show("empty", list.workers.length === 0);
    // A worker may just have registered with the panel's key: ask for its state now.
    if (panelKey && keyTimer) { keepKey(); }
  }

  // -- the "Register worker" panel -------------------------------------------------------

  function openPanel() {
    $("panel-error").textContent = "";
    api("POST", "/api/regkey").then(function (r) {
      if (r.status !== 200) {
        show("panel", true);
        $("command").textContent = "";
        $("panel-error").textContent = (r.data && r.data.error) || ("failed (" + r.status + ")");
        return;
      }
      panelKey = r.data.registration_key;
      $("command").textContent = r.data.command;
      $("copied").textContent = "";
      keyState("live", r.data.expires_at);
      show("panel", true);
      if (keyTimer) { clearInterval(keyTimer); }
      keyTimer = setInterval(keepKey, keepaliveMs);
    });
  }

  function keepKey() {
    if (!panelKey) { return; }
    api("POST", "/api/regkey/keepalive", JSON.stringify({ registration_key: panelKey }))
      .then(function (r) {
        if (r.status !== 200) { $("panel-error").textContent = (r.data && r.data.error) || ""; return; }
        keyState(r.data.state, r.data.expires_at);
      });
  }

  function keyState(state, expiresAt) {
    var text;
    if (state === "live") {
      text = "This key is kept valid while this panel is open" +
        (expiresAt ? " (now until " + new Date(expiresAt).toLocaleTimeString() + ")." : ".");
    } else if (state === "consumed") {
      text = "A worker registered with this key.";
    } else {
      text = "This key is no longer valid; close the panel and register again.";
    }
    $("key-state").textContent = text;
    $("key-state").dataset.state = state;
    if (state !== "live" && keyTimer) { clearInterval(keyTimer); keyTimer = null; }
  }

  function closePanel() {
    // The key is not extended any more: it expires by itself.
    if (keyTimer) { clearInterval(keyTimer); keyTimer = null; }
    panelKey = "";
    $("command").textContent = "";
    show("panel", false);
  }

  function copyCommand() {
    var text = $("command").textContent;
    function selectIt() {
      var range = document.createRange();
      range.selectNodeContents($("command"));
      var sel = window.getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
      $("copied").textContent = "Selected: press Ctrl+C (\u2318C) to copy.";
    }
    if (navigator.clipboard && navigator.clipboard.writeText) {
      navigator.clipboard.writeText(text).then(function () {
        $("copied").textContent = "Copied.";
      }, selectIt);
    } else {
      selectIt();
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    $("sign-in-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", signOut);
    $("register").addEventListener("click", openPanel);
    $("close-panel").addEventListener("click", closePanel);
    $("copy").addEventListener("click", copyCommand);
    api("GET", "/api/session").then(function (r) {
      if (r.status === 200) { signedIn(r.data); } else { signedOut(); }
    }, signedOut);
  });
})();
