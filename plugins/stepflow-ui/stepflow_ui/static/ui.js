// stepflow ui: live parts of a page. The body's data-live names a server-sent-events URL;
// on each "change" the page is fetched again and its #live part swapped in place (with
// htmx's ajax helper, so filters and links keep working). A step page's #log with a
// data-log URL is filled as the step's log arrives. Filters swap #live through htmx and push
// the new address, which the next refresh fetches.
(function () {
  "use strict";

  function refresh() {
    if (window.htmx) {
      window.htmx.ajax("GET", window.location.pathname + window.location.search, {
        target: "#live",
        select: "#live",
        swap: "outerHTML",
      });
    } else {
      window.location.reload();
    }
  }

  function follow(url, onEvent) {
    if (!url || !window.EventSource) return null;
    var source = new EventSource(url);
    onEvent(source);
    return source;
  }

  function start() {
    var liveUrl = document.body.getAttribute("data-live");
    follow(liveUrl, function (source) {
      source.addEventListener("change", function (event) {
        refresh();
        if (event.data === "done") {
          source.close();
          document.body.removeAttribute("data-live");
        }
      });
    });
    followLog(document.getElementById("log"));
  }

  // A step's log while it runs: "live" events add each attempt's new output to that
  // attempt's stream (the first one, "reset", brings everything printed so far), then one
  // "log" event brings the recorded log and ends the stream.
  function followLog(log) {
    var logUrl = log && log.getAttribute("data-log");
    follow(logUrl, function (source) {
      function part(attempt, stream) {
        var key = attempt + " " + stream;
        var found = null;
        log.querySelectorAll("span[data-part]").forEach(function (el) {
          if (el.getAttribute("data-part") === key) found = el;
        });
        if (!found) {
          found = document.createElement("span");
          found.setAttribute("data-part", key);
          found.textContent = "[" + stream + " #" + attempt + "] ";
          log.appendChild(found);
        }
        return found;
      }
      source.addEventListener("live", function (event) {
        var found = JSON.parse(event.data);
        if (found.reset) log.textContent = "";
        found.entries.forEach(function (e) {
          part(e.attempt, e.stream).appendChild(document.createTextNode(e.text));
        });
      });
      source.addEventListener("log", function (event) {
        var found = JSON.parse(event.data);
        log.textContent = "";
        found.entries.forEach(function (e) {
          part(e.attempt, e.stream).appendChild(document.createTextNode(e.text));
        });
        if (!found.entries.length) log.textContent = "(nothing written)";
        var note = document.getElementById("log-note");
        if (note) note.remove();
        source.close();
      });
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
