// Box prompts on a slice view: drag a rectangle over the view's image (a rubber band follows the pointer), release
// to send its corners to the server (in the image's CSS pixels, top-left origin, with the image's size), Esc cancels.
window.delightsamBox = (function () {
  let drag = null;

  function imageRect(overlay) {
    const image = overlay.parentElement.querySelector("img.image-display-area");
    return (image || overlay).getBoundingClientRect();
  }

  function clamp(value, low, high) {
    return Math.min(Math.max(value, low), high);
  }

  function point(event) {
    const rect = drag.rect;
    return [clamp(event.clientX - rect.left, 0, rect.width), clamp(event.clientY - rect.top, 0, rect.height)];
  }

  function draw() {
    const [x0, y0] = drag.start;
    const [x1, y1] = drag.end;
    const offsetX = drag.rect.left - drag.overlay.getBoundingClientRect().left;
    const offsetY = drag.rect.top - drag.overlay.getBoundingClientRect().top;
    Object.assign(drag.band.style, {
      left: `${offsetX + Math.min(x0, x1)}px`,
      top: `${offsetY + Math.min(y0, y1)}px`,
      width: `${Math.abs(x1 - x0)}px`,
      height: `${Math.abs(y1 - y0)}px`,
    });
  }

  function stop() {
    if (!drag) return;
    drag.band.remove();
    window.removeEventListener("pointermove", move);
    window.removeEventListener("pointerup", up);
    window.removeEventListener("keydown", key);
    drag = null;
  }

  function move(event) {
    if (!drag) return;
    drag.end = point(event);
    draw();
  }

  function up(event) {
    if (!drag) return;
    drag.end = point(event);
    const { start, end, rect, viewId, trigger } = drag;
    stop();
    if (Math.abs(end[0] - start[0]) < 3 || Math.abs(end[1] - start[1]) < 3) return; // a click, not a box
    window.trame.trigger(trigger, [viewId, [start[0], start[1], end[0], end[1]], [rect.width, rect.height]]);
  }

  function key(event) {
    if (event.key === "Escape") stop();
  }

  function down(event, viewId, trigger) {
    if (event.button !== 0) return;
    event.preventDefault();
    stop();
    const overlay = event.currentTarget;
    const band = document.createElement("div");
    band.setAttribute("data-testid", "box-band");
    Object.assign(band.style, {
      position: "absolute",
      border: "2px dashed #ffd54f",
      background: "rgba(255, 213, 79, 0.12)",
      pointerEvents: "none",
    });
    overlay.appendChild(band);
    drag = { overlay, band, viewId, trigger, rect: imageRect(overlay) };
    drag.start = drag.end = point(event);
    draw();
    window.addEventListener("pointermove", move);
    window.addEventListener("pointerup", up);
    window.addEventListener("keydown", key);
  }

  return { down, cancel: stop };
})();
