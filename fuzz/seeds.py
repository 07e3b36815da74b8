#!/usr/bin/env python3
"""Writes the seed corpora fuzz/corpus/<target>/ from the project's test
vectors (testdata/*.json) plus a few hand-made edge cases. Deterministic:
re-running it rewrites the same files. Seeds are named seed-<sha1 prefix>, so
libFuzzer's own finds (named by their full sha1) never collide with them.

    python3 fuzz/seeds.py
"""
import hashlib
import json
import pathlib
import random
import struct

ROOT = pathlib.Path(__file__).resolve().parent.parent
TESTDATA = ROOT / "testdata"
CORPUS = ROOT / "fuzz" / "corpus"


def load(name):
    return json.loads((TESTDATA / name).read_text())


def write(target, seeds):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    for old in d.glob("seed-*"):
        old.unlink()
    for s in seeds:
        if isinstance(s, str):
            s = s.encode()
        (d / f"seed-{hashlib.sha1(s).hexdigest()[:16]}").write_bytes(s)
    print(f"{target}: {len(set(seeds))} seeds")


def envelope(t, flags, rid, name, body):
    n = name.encode() if isinstance(name, str) else name
    return struct.pack(">BBIH", t, flags, rid, len(n)) + n + body


envelopes = load("envelope.json")
frames = load("frames.json")
key_init = load("key_init.json")
key_init_py = load("key_init_pyhpke.json")
scram = load("scram.json")["cases"]

# envelope_decode: every valid and invalid vector, every frame on the wire.
env_seeds = [bytes.fromhex(v["wire_hex"]) for v in envelopes["valid"] + envelopes["invalid"]]
env_seeds += [bytes.fromhex(f["wire_hex"]) for f in frames["frames"] + frames["invalid"]]
env_seeds += [bytes.fromhex(key_init["key_init_message_hex"]), b"", b"\x10\x00\x00\x00\x00\x01\x04\x00"]
write("envelope_decode", env_seeds)

# protect_open: the c2s frames (seq 0 opens under the fixed key) and the invalid ones.
write("protect_open", [bytes.fromhex(f["wire_hex"]) for f in frames["frames"] + frames["invalid"]])

# protect_stream: structured (arbitrary) input; random byte strings of a few sizes.
rng = random.Random(6)
write("protect_stream", [bytes(rng.randrange(256) for _ in range(n)) for n in (64, 200, 600, 1500, 4000)])

# scram_client_first: the vectors' client-first messages and each e= case.
write("scram_client_first", [c["client_first"] for c in scram] + [
    "n,,n=alice,r=abc",
    "y,,n=alice,r=abc",
    "p=tls-exporter,,n=alice,r=abc",
    "p=wsgate-v1,,m=ext,n=alice,r=abc",
    "p=wsgate-v1,,n=al=ce,r=abc",
    "p=wsgate-v1,a=admin,n=alice,r=abc",
    "p=wsgate-v1,,n=a=2Cb=3Dc,r=" + "x" * 256,
    "p=wsgate-v1,,n=user,r=abc,x=ext",
])

# scram_client_final: selector byte (case index; bit 7 = wrong observed IP) + client-final.
cf = []
for i, c in enumerate(scram):
    cf += [bytes([i]) + c["client_final"].encode(), bytes([0x80 | i]) + c["client_final"].encode(),
           bytes([i]) + c["client_final_without_proof"].encode() + b",p=AAAA"]
write("scram_client_final", cf)

# scram_client: selector + server-first + "\n" + server-final.
sc = []
for i, c in enumerate(scram):
    sc += [bytes([i]) + f"{c['server_first']}\n{c['server_final']}".encode(),
           bytes([i]) + f"{c['server_first']}\ne=invalid-proof".encode(),
           bytes([i]) + f"{c['server_first'].replace('i=4096', 'i=4095')}\nv=AAAA".encode()]
write("scram_client", sc)

# scram_roundtrip: user name + 0xFF + password.
write("scram_roundtrip", [c["username"].encode() + b"\xff" + c["password"].encode() for c in scram] + [
    b"a=b,c\xffpw", b"\xe2\x85\xa8\xffI\xc2\xadX", b"user\xff", b"\xffpw", b"\xd8\xa71\xffx",
])

# key_init: whole KEY_INIT messages (Rust-sealed and pyhpke-sealed) and malformed bodies.
ki = [bytes.fromhex(key_init["key_init_message_hex"]),
      envelope(2, 0, 0, key_init_py["session_id"], key_init_py["key_init_body"].encode())]
for body in [b"not json", b'{"kid":"AAAAAAAAAAA","enc":"AA","ct":"AA"}', b'{"kid":1}', b"[]"]:
    ki.append(envelope(2, 0, 0, key_init["session_id"], body))
write("key_init", ki)

# http_json: selector byte + body (see fuzz_targets/http_json.rs).
c0 = scram[0]
hj = [
    b"\x00" + json.dumps({"scram": c0["client_first"]}).encode(),
    b"\x00" + json.dumps({"sid": "AAAAAAAAAAAAAAAAAAAAAA", "scram": c0["client_final"]}).encode(),
    b"\x00" + json.dumps({"sid": 1, "scram": "x"}).encode(),
    b"\x00this is not json",
    b"\x01" + json.dumps({"username": "user", "gs2_header": "p=wsgate-v1,,",
                          "client_first_bare": c0["client_first_bare"], "server_first": c0["server_first"],
                          "nonce": c0["client_nonce"] + c0["server_nonce"], "ip": c0["ip"]}).encode(),
    b"\x02" + json.dumps({"keys": [{"kid": key_init["kid"], "kem_id": 32, "kdf_id": 1, "aead_id": 2,
                                    "pk": key_init["server_pk_b64u"]}]}).encode(),
    b"\x03" + json.dumps({"v": 1, "nonce": key_init["hello_nonce_b64u"], "ip": "127.0.0.1",
                          "keys": [key_init["kid"]]}).encode(),
    b"\x04" + json.dumps({"user": "user", "expires_in": 43200}).encode(),
]
write("http_json", hj)

# config: the README's full example, pieces of it, and each kind of mistake.
readme = (ROOT / "README.md").read_text()
full = readme.split("```toml\n", 1)[1].split("```", 1)[0]
write("config", [
    full,
    "",
    '[testing]\nraw_echo = true\n',
    '[limits]\nkey_init_timeout_secs = 1\nping_interval_secs = 1\nidle_timeout_secs = 2\n',
    '[[routes]]\nname = "app.*"\nbuiltin = "whoami"\n[[routes]]\nname = "secret.echo"\nbuiltin = "echo"\nsensitive = true\n',
    '[[routes]]\nname = "a"\nupstream = "http://127.0.0.1:1"\n',
    'listen = "nope"\n',
    'trusted_proxies = ["bogus", "10.0.0.0/8", "::1"]\n',
    '[login]\niterations = 10\n',
    'lissen = "127.0.0.1:1"\n',
])
