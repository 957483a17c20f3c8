// The edit page's region grid. Press on a cell and drag: with the rectangle brush the rectangle from that cell
// to the pointer is painted (or erased, when the first cell was on); with the paint brush every cell the pointer
// passes is. A click toggles one cell. The text field holds the region as rows of 0/1 joined by "/", which is
// what the server reads.
(function () {
  const grid = document.getElementById("region-grid");
  const field = document.getElementById("region");
  if (!grid || !field) return;
  const side = parseInt(grid.dataset.side, 10);
  const brush = document.getElementById("brush");
  const cells = [];
  let drag = null;  // {row, col, paint, before}
  function write() {
    const rows = [];
    for (let r = 0; r < side; r++) rows.push(cells.slice(r * side, (r + 1) * side).map(c => c.classList.contains("on") ? "1" : "0").join(""));
    field.value = rows.some(row => row.includes("1")) ? rows.join("/") : "";
  }
  function read() {
    const rows = field.value.trim().split("/");
    const drawn = rows.length === side && rows.every(row => /^[01]+$/.test(row) && row.length === side);
    cells.forEach((c, i) => c.classList.toggle("on", drawn && rows[Math.floor(i / side)][i % side] === "1"));
  }
  function paint(row, col) {
    if (brush && brush.value === "paint") {
      cells[row * side + col].classList.toggle("on", drag.paint);
      write();
      return;
    }
    const [r0, r1] = [Math.min(drag.row, row), Math.max(drag.row, row)];
    const [c0, c1] = [Math.min(drag.col, col), Math.max(drag.col, col)];
    cells.forEach((c, i) => {
      const r = Math.floor(i / side), k = i % side;
      const inside = r >= r0 && r <= r1 && k >= c0 && k <= c1;
      c.classList.toggle("on", inside ? drag.paint : drag.before[i]);
    });
    write();
  }
  for (let i = 0; i < side * side; i++) {
    const cell = document.createElement("div");
    const row = Math.floor(i / side), col = i % side;
    cell.dataset.row = row;
    cell.dataset.col = col;
    cell.addEventListener("mousedown", e => {
      e.preventDefault();
      drag = {row, col, paint: !cell.classList.contains("on"), before: cells.map(c => c.classList.contains("on"))};
      paint(row, col);
    });
    cell.addEventListener("mouseenter", () => { if (drag) paint(row, col); });
    grid.appendChild(cell);
    cells.push(cell);
  }
  document.addEventListener("mouseup", () => { drag = null; });
  field.addEventListener("input", read);
  document.getElementById("clear-region").addEventListener("click", () => { field.value = ""; read(); });
  read();
})();

// The concept page: the heatmap opacity slider redraws every heatmap at the chosen opacity (0: the raw image).
(function () {
  const slider = document.getElementById("opacity");
  if (!slider) return;
  slider.addEventListener("input", () => {
    document.querySelectorAll("img.heatmap").forEach(img => {
      const url = new URL(img.src, window.location.href);
      url.searchParams.set("opacity", slider.value);
      img.src = url.toString();
    });
  });
})();

// The concept page: which caption words drive the concept, measured by the server on demand.
(function () {
  const table = document.getElementById("words");
  if (!table) return;
  const body = table.querySelector("tbody");
  function cell(row, text) { const td = document.createElement("td"); td.textContent = text; row.appendChild(td); }
  fetch(table.dataset.src).then(r => r.json()).then(data => {
    body.textContent = "";
    if (!data.ok) { const row = body.insertRow(); cell(row, data.error || "not measured"); return; }
    data.words.forEach(w => {
      const row = body.insertRow();
      row.className = "word";
      cell(row, w.word);
      cell(row, w.activation.toFixed(3));
      cell(row, (w.change >= 0 ? "+" : "") + w.change.toFixed(3));
    });
    const total = body.insertRow();
    cell(total, "(full caption)");
    cell(total, data.activation.toFixed(3));
    cell(total, "");
  });
})();
