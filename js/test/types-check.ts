// Compiled (not run) by `npm run typecheck`: the README example must
// type-check against the hand-written sm.d.ts.
import { connect, SharedSession, Session as SessionClass, WsgateError, type GapDetail, type Position, type PresenceEvent, type PresenceList, type PresenceMeta, type Session, type Subscription } from "../sm.js";

export async function example(): Promise<void> {
  const s: Session = await connect({ username: "demo", password: "wsgate-demo", url: "http://127.0.0.1:8080", crypto: "auto" });
  const user: string | null = s.user;
  const ip: string | null = s.ip;
  const off = s.on("state", (d) => console.log(d.state, d.previous, d.error?.code));
  const bytes: Uint8Array = await s.request("sys.echo", "hi", { sensitive: true });
  const who = await s.requestJson<{ user: string; ip: string }>("sys.whoami");
  const unsubscribe = await s.subscribe("news", (data: Uint8Array, meta) => console.log(meta.channel, meta.encrypted, data.length));
  await unsubscribe();
  // Channel continuity: positions, gaps, a stored position, publish positions.
  const stored: Position | null = null;
  const feed: Subscription = await s.subscribe(
    "hist.feed",
    (data, meta) => console.log(meta.offset ?? 0, meta.epoch ?? "", data.length),
    { since: stored, onGap: (g: GapDetail) => console.log(g.reason, g.epoch, g.offset, g.previous?.offset), onRecovered: (r) => console.log(r.missed, r.since.offset) },
  );
  const pos: Position | null = feed.position;
  const published: Position | null = await s.publish("hist.feed", { n: 1 });
  console.log(feed.channel, pos?.epoch, published?.offset);
  await feed();
  // Presence: who is online, and join/leave events.
  const online = new Map<string, number>();
  const room: Subscription = await s.subscribe("room.lobby", () => {}, {
    presence: (d: PresenceEvent, meta: PresenceMeta) => {
      if (d.join !== undefined) online.set(d.join, online.get(d.join) ?? 1);
      else online.delete(d.leave);
      console.log(meta.channel, meta.encrypted);
    },
  });
  const list: PresenceList = await s.presence("room.lobby", { sensitive: false, timeout: 5000 });
  for (const { user, connections } of list.users) online.set(user, connections);
  if (list.truncated) console.log("more users than listed");
  await room();
  off();
  // Shared mode: the same Session API; a later tab joins without the password.
  const tab: Session = await connect({ username: "demo", shared: true, workerUrl: new URL("/sm-worker.js", "http://127.0.0.1:8080"), heartbeatInterval: 15000 });
  const isShared: boolean = tab.shared;
  if (tab instanceof SharedSession && tab instanceof SessionClass) console.log(isShared, tab.shared === true);
  try {
    await s.request("sys.echo", { any: "json" });
  } catch (e) {
    if (e instanceof WsgateError && e.code === "encryption_required") console.log(e.message);
  }
  await s.logout();
  s.close();
  console.log(user, ip, bytes, who.user);
}
