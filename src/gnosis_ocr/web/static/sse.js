// Server-Sent Events, parsed by hand from a fetch() body so the request can carry the API key header
// (EventSource cannot send headers). Follows the WHATWG "event stream interpretation" rules: lines end in
// CRLF, LF or CR; a line starting with ":" is a comment; "field: value" drops one space after the colon;
// a blank line dispatches the event (none when it has no data).

export class SseParser {
  /** @param {(type: string, data: string, id: string) => void} onEvent */
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = "";
    this.type = "";
    this.data = [];
    this.lastId = "";
  }

  /** Feed decoded text as it arrives; complete events are dispatched at once. */
  push(text) {
    this.buffer += text;
    let start = 0;
    for (;;) {
      const cr = this.buffer.indexOf("\r", start);
      const lf = this.buffer.indexOf("\n", start);
      if (cr < 0 && lf < 0) break;
      let end = cr < 0 ? lf : lf < 0 ? cr : Math.min(cr, lf);
      let next = end + 1;
      if (end === cr) {
        if (end === this.buffer.length - 1) break; // a CR at the end may be half of a CRLF: wait
        if (this.buffer[end + 1] === "\n") next = end + 2;
      }
      this.line(this.buffer.slice(start, end));
      start = next;
    }
    this.buffer = this.buffer.slice(start);
  }

  /** The stream closed: a trailing lone CR still ends a line; an event without its blank line is dropped. */
  end() {
    if (this.buffer.endsWith("\r")) this.line(this.buffer.slice(0, -1));
    this.buffer = "";
    this.type = "";
    this.data = [];
  }

  line(line) {
    if (line === "") {
      this.dispatch();
      return;
    }
    if (line.startsWith(":")) return;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.type = value;
    else if (field === "data") this.data.push(value);
    else if (field === "id" && !value.includes("\0")) this.lastId = value;
    // "retry" and unknown fields are ignored: reconnection is ours to decide (we fall back to polling)
  }

  dispatch() {
    const type = this.type || "message";
    const data = this.data;
    this.type = "";
    this.data = [];
    if (data.length === 0) return;
    this.onEvent(type, data.join("\n"), this.lastId);
  }
}
