// dustgate console: live updates over server-sent events. No framework, nothing fetched.
// The server renders every fragment (escaped); this only swaps them in.
(function () {
  "use strict";
  // lease left on the cards counts down between updates (the server sends it as seconds)
  function stamp(root) {
    root.querySelectorAll(".lease[data-left]").forEach(function (el) { el.setAttribute("data-t0", String(Date.now())); });
  }
  stamp(document);
  setInterval(function () {
    document.querySelectorAll(".lease[data-left]").forEach(function (el) {
      var left = parseFloat(el.getAttribute("data-left")) - (Date.now() - parseFloat(el.getAttribute("data-t0") || "0")) / 1000;
      el.textContent = "lease " + Math.max(0, Math.round(left)) + "s";
    });
  }, 1000);
  var holder = document.querySelector("[data-live]");
  if (!holder || !window.EventSource) return;
  var badge = document.getElementById("livestate");
  var src = new EventSource(holder.getAttribute("data-live"));
  function fragment(html) {
    var t = document.createElement("template");
    t.innerHTML = html.trim();
    return t.content.firstElementChild;
  }
  src.onopen = function () { if (badge) { badge.hidden = false; badge.className = "live up"; } };
  src.onerror = function () { if (badge) { badge.className = "live down"; } };
  src.addEventListener("site", function (ev) {
    var d = JSON.parse(ev.data);
    var old = document.getElementById("site-" + d.site);
    var board = document.getElementById("board");
    var node = fragment(d.html);
    if (!node) return;
    stamp(node);
    if (old) { old.replaceWith(node); }
    else if (board && !board.classList.contains("one")) { board.appendChild(node); }
    document.body.setAttribute("data-updated", String(Date.now()));
    recount();
  });
  // the board's summary: sites per state, counted from the cards on the page
  function recount() {
    var counts = document.getElementById("counts");
    if (!counts) return;
    var n = {};
    document.querySelectorAll("#board .card").forEach(function (c) {
      var s = c.getAttribute("data-state");
      n[s] = (n[s] || 0) + 1;
    });
    counts.textContent = "";
    Object.keys(n).sort().forEach(function (s) {
      counts.appendChild(document.createTextNode(" · "));
      var pill = document.createElement("span");
      pill.className = "pill st-" + s;
      pill.textContent = s + " " + n[s];
      counts.appendChild(pill);
    });
  }
  function prepend(id, html) {
    var list = document.getElementById(id);
    var node = fragment(html);
    if (list && node) { list.insertBefore(node, list.firstChild); }
  }
  src.addEventListener("event", function (ev) { prepend("events", JSON.parse(ev.data).html); });
  src.addEventListener("reload", function (ev) {
    var d = JSON.parse(ev.data);
    prepend("reloads", d.html);
    var saved = document.getElementById("saved");
    if (saved) { saved.textContent = "Saved. The rule engine says: " + d.kind; saved.className = d.kind === "reload" ? "ok" : "error"; }
  });
})();
