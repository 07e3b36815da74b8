// Compiled (not run) by `npm run typecheck`: the README example must
// type-check against the hand-written sm.d.ts.
import { connect, WsgateError, type Session } from "../sm.js";

export async function example(): Promise<void> {
  const s: Session = await connect({ username: "demo", password: "wsgate-demo", url: "http://127.0.0.1:8080", crypto: "auto" });
  const user: string | null = s.user;
  const ip: string | null = s.ip;
  const off = s.on("state", (d) => console.log(d.state, d.previous, d.error?.code));
  const bytes: Uint8Array = await s.request("sys.echo", "hi", { sensitive: true });
  const who = await s.requestJson<{ user: string; ip: string }>("sys.whoami");
  const unsubscribe = await s.subscribe("news", (data: Uint8Array, meta) => console.log(meta.channel, meta.encrypted, data.length));
  await unsubscribe();
  off();
  try {
    await s.request("sys.echo", { any: "json" });
  } catch (e) {
    if (e instanceof WsgateError && e.code === "encryption_required") console.log(e.message);
  }
  await s.logout();
  s.close();
  console.log(user, ip, bytes, who.user);
}
