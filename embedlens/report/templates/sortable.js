// Sortable tables: click a column heading to sort by it (again to reverse). Columns whose cells are
// all numbers sort as numbers, others as text; the absent mark sorts last.
document.querySelectorAll("table.sortable").forEach((table) => {
  const body = table.tBodies[0];
  table.querySelectorAll("thead th").forEach((heading, column) => {
    heading.tabIndex = 0;
    const sort = () => {
      const rows = Array.from(body.rows);
      const cells = rows.map((row) => row.cells[column].textContent.trim().replace(/,/g, ""));
      const present = cells.filter((text) => text !== "" && text !== "—");
      const numeric = present.length > 0 && present.every((text) => !isNaN(Number(text)));
      const descending = heading.getAttribute("aria-sort") === "ascending";
      const key = (i) => (cells[i] === "—" || cells[i] === "" ? null : numeric ? Number(cells[i]) : cells[i]);
      const order = rows.map((_, i) => i).sort((a, b) => {
        const x = key(a), y = key(b);
        if (x === null || y === null) return (x === null) - (y === null);
        const c = numeric ? x - y : x.localeCompare(y, undefined, {numeric: true});
        return descending ? -c : c;
      });
      table.querySelectorAll("thead th").forEach((other) => other.removeAttribute("aria-sort"));
      heading.setAttribute("aria-sort", descending ? "descending" : "ascending");
      order.forEach((i) => body.appendChild(rows[i]));
    };
    heading.addEventListener("click", sort);
    heading.addEventListener("keydown", (event) => { if (event.key === "Enter") sort(); });
  });
});
// A click on a figure shows it at its full embedded size (scroll inside), another click fits it again.
document.querySelectorAll("figure img").forEach((image) => {
  image.addEventListener("click", () => image.closest("figure").classList.toggle("zoomed"));
});
