import mqttPacket, { type Packet, type Parser } from 'mqtt-packet';

/** Where the packets a lent parser reads go, told which connection the chunk came from. */
export interface ParsedTo<C> {
  packet(conn: C, packet: Packet): void;
  error(conn: C, err: Error): void;
}

/**
 * MQTT parsers lent, not owned: a connection holds one only while a packet of it has arrived in part.
 * A parser (with its buffer list, a stream of its own) is about 1.8 KB of heap, much of what an idle
 * connection would otherwise cost; the parser that read a chunk to the end of a packet goes back to be
 * lent to the next connection that speaks. Parsing is synchronous, so the connection being read is known
 * while its packets are emitted.
 */
export class LentParsers<C> {
  private reading: C | undefined;
  private spare: Parser | undefined;

  constructor(private readonly to: ParsedTo<C>) {}

  /**
   * Parses `chunk` of `conn` with `held` (the parser it kept from a packet that arrived in part) or a
   * lent one, read at `settings` (mqtt-packet's parser options, e.g. the protocol level) when given.
   * Returns the parser `conn` must keep until its next chunk, if a packet is still in part.
   */
  read(conn: C, held: Parser | undefined, chunk: Buffer, settings?: object): Parser | undefined {
    const parser = held ?? this.lend();
    if (settings) (parser as unknown as { settings: object }).settings = settings;
    // A chunk read while another connection's packets are being handled (not expected: reads are not
    // synchronous) is told apart by restoring the outer connection afterwards.
    const outer = this.reading;
    this.reading = conn;
    let left: number;
    try {
      left = parser.parse(chunk);
    } finally {
      this.reading = outer;
    }
    const state = parser as unknown as { _stateCounter: number; error: Error | null };
    if (left === 0 && state._stateCounter === 0 && state.error === null) {
      this.spare ??= parser;
      return undefined;
    }
    return parser;
  }

  private lend(): Parser {
    const spare = this.spare;
    if (spare) {
      this.spare = undefined;
      return spare;
    }
    const parser = mqttPacket.parser();
    parser.on('packet', (packet: Packet) => this.to.packet(this.reading!, packet));
    parser.on('error', (err: Error) => this.to.error(this.reading!, err));
    return parser;
  }
}
