// Typeset the formulas that pymdownx.arithmatex (generic mode) leaves in the page:
// <span class="arithmatex">\(...\)</span> inline and <div class="arithmatex">\[...\]</div>
// display, with the KaTeX bundled under docs/assets/katex (no network needed).
(function () {
  "use strict";

  var DELIMITERS = [["\\(", "\\)", false], ["\\[", "\\]", true], ["$$", "$$", true], ["$", "$", false]];

  function split(text) {
    var source = text.trim();
    for (var i = 0; i < DELIMITERS.length; i++) {
      var open = DELIMITERS[i][0], close = DELIMITERS[i][1];
      if (source.length >= open.length + close.length &&
          source.slice(0, open.length) === open && source.slice(-close.length) === close) {
        return { tex: source.slice(open.length, source.length - close.length), display: DELIMITERS[i][2] };
      }
    }
    return { tex: source, display: false };
  }

  function typeset(root) {
    var nodes = (root || document).querySelectorAll(".arithmatex");
    for (var i = 0; i < nodes.length; i++) {
      var node = nodes[i];
      if (node.querySelector(".katex")) continue;  // already typeset (instant navigation)
      var parts = split(node.textContent);
      katex.render(parts.tex, node, {
        displayMode: parts.display || node.tagName === "DIV",
        throwOnError: false,
      });
    }
  }

  if (typeof document$ !== "undefined") {
    // mkdocs-material: runs on the first load and after each instant-navigation page switch
    document$.subscribe(function () { typeset(document); });
  } else if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () { typeset(document); });
  } else {
    typeset(document);
  }
})();
