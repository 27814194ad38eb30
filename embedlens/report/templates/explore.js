// The explore page: draw the map for the chosen colouring, show a point's image on hover, and
// highlight the images of the classes whose names match the search box.
(function () {
  const map = document.getElementById("map");
  const hover = document.getElementById("hover");
  const what = hover.querySelector(".what");
  const canvas = document.getElementById("thumb");
  const context = canvas.getContext("2d");
  const sheets = Array.from(document.querySelectorAll("img.sheet"));
  const search = document.getElementById("search");
  const matches = document.getElementById("matches");
  const perSheet = DATA.sheetColumns * DATA.sheetColumns;
  let colouring = document.getElementById("colour-by").value;

  function draw() {
    const figure = DATA.figures[colouring];
    const traces = figure.data.map((trace) => Object.assign({}, trace));
    const query = search.value.trim().toLowerCase();
    if (query) {
      const hit = [];
      DATA.class.forEach((name, i) => { if (name.toLowerCase().includes(query)) hit.push(i); });
      traces.forEach((trace) => { trace.opacity = 0.12; });
      const where = new Map();
      traces.forEach((trace) => trace.customdata.forEach((id, k) => where.set(id, [trace.x[k], trace.y[k]])));
      traces.push({type: "scattergl", mode: "markers", name: "matches: " + search.value.trim(), hoverinfo: "none",
                   x: hit.map((i) => where.get(i)[0]), y: hit.map((i) => where.get(i)[1]), customdata: hit,
                   marker: {size: 9, color: "rgba(0,0,0,0)", line: {width: 2, color: "#111"}}});
      const classes = new Set(hit.map((i) => DATA.class[i]));
      matches.textContent = hit.length + " images of " + classes.size + " class" + (classes.size === 1 ? "" : "es") + " match";
    } else {
      matches.textContent = "";
    }
    Plotly.react(map, traces, figure.layout, {responsive: true, displaylogo: false, scrollZoom: true});
  }

  function describe(id) {
    const lines = [DATA.class[id], DATA.split[id] + " #" + DATA.index[id] + " (source " + DATA.source[id] + ")"];
    for (const [name, values] of Object.entries(DATA.columns)) if (values[id] !== null) lines.push(name + ": " + values[id]);
    if (DATA.unreadable[id]) lines.push("image unreadable: " + DATA.unreadable[id]);
    return lines;
  }

  function show(event) {
    const point = event.points[0];
    const id = point.customdata;
    const sheet = sheets[Math.floor(id / perSheet)];
    const cell = id % perSheet;
    const size = DATA.thumbnail;
    context.clearRect(0, 0, canvas.width, canvas.height);
    context.drawImage(sheet, (cell % DATA.sheetColumns) * size, Math.floor(cell / DATA.sheetColumns) * size,
                      size, size, 0, 0, canvas.width, canvas.height);
    what.replaceChildren(...describe(id).map((text) => Object.assign(document.createElement("div"), {textContent: text})));
    hover.dataset.point = id;
    hover.style.display = "block";
    const x = event.event.clientX, y = event.event.clientY;
    const box = hover.getBoundingClientRect();
    hover.style.left = Math.min(x + 16, window.innerWidth - box.width - 4) + "px";
    hover.style.top = Math.min(y + 16, window.innerHeight - box.height - 4) + "px";
  }

  document.getElementById("colour-by").addEventListener("change", (event) => { colouring = event.target.value; draw(); });
  search.addEventListener("input", draw);
  draw();
  map.on("plotly_hover", show);
  map.on("plotly_unhover", () => { hover.style.display = "none"; });
})();
