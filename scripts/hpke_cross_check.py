#!/usr/bin/env python3
"""Cross-checks wsgate's KEY_INIT (HPKE mode_psk, X25519 / HKDF-SHA256 /
AES-256-GCM, RFC 9180) against pyhpke, an independent implementation.

  check (default): pyhpke opens testdata/key_init.json (sealed by the Rust
                   core) and testdata/key_init_pyhpke.json (sealed by pyhpke,
                   opened by the Rust test `pyhpke_sealed_key_init_opens`).
  --write:         reseals testdata/key_init_pyhpke.json with pyhpke.

Needs: pip install pyhpke
"""
import base64
import json
import pathlib
import sys

from pyhpke import AEADId, CipherSuite, KDFId, KEMId

TESTDATA = pathlib.Path(__file__).resolve().parent.parent / "testdata"
SUITE = CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.AES256_GCM)


def b64u_decode(s: str) -> bytes:
    if "=" in s:
        raise ValueError("b64u must not be padded")
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def b64u_encode(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def hpke_params(v: dict) -> dict:
    return {
        "info": bytes.fromhex(v["hpke_info_hex"]),
        "psk": bytes.fromhex(v["session_key_hex"]),
        "psk_id": v["session_id"].encode(),
    }


def open_vector(v: dict) -> bytes:
    sk = SUITE.kem.deserialize_private_key(bytes.fromhex(v["server_sk_hex"]))
    body = json.loads(v["key_init_body"])
    ctx = SUITE.create_recipient_context(b64u_decode(body["enc"]), sk, **hpke_params(v))
    return ctx.open(b64u_decode(body["ct"]), aad=b"")


def main() -> int:
    rust = json.loads((TESTDATA / "key_init.json").read_text())
    # The info string must be exactly "wsgate-v1 key" || 0x00 || nonce.
    nonce = b64u_decode(rust["hello_nonce_b64u"])
    assert bytes.fromhex(rust["hpke_info_hex"]) == b"wsgate-v1 key\x00" + nonce, "info layout"
    dp = open_vector(rust)
    assert dp.hex() == rust["dynamic_password_hex"], "pyhpke opened a different dynamic password"
    print("ok: pyhpke opens the KEY_INIT sealed by the Rust core")

    # A wrong psk must fail (mode_psk really binds the session key).
    wrong = dict(rust, session_key_hex="00" * 32)
    try:
        open_vector(wrong)
    except Exception:
        print("ok: pyhpke refuses the KEY_INIT under a wrong session key")
    else:
        raise AssertionError("opened with a wrong psk")

    out = TESTDATA / "key_init_pyhpke.json"
    if "--write" in sys.argv:
        pk = SUITE.kem.deserialize_public_key(b64u_decode(rust["server_pk_b64u"]))
        enc, ctx = SUITE.create_sender_context(pk, **hpke_params(rust))
        ct = ctx.seal(bytes.fromhex(rust["dynamic_password_hex"]), aad=b"")
        body = {"kid": rust["kid"], "enc": b64u_encode(enc), "ct": b64u_encode(ct)}
        v = dict(rust, key_init_body=json.dumps(body, separators=(",", ":")),
                 description="KEY_INIT sealed by pyhpke (independent RFC 9180 implementation) for the Rust core to open.")
        v.pop("key_init_message_hex", None)
        v["enc_b64u"], v["ct_b64u"] = body["enc"], body["ct"]
        out.write_text(json.dumps(v, indent=2, sort_keys=True) + "\n")
        print(f"wrote {out}")
    theirs = json.loads(out.read_text())
    assert open_vector(theirs).hex() == rust["dynamic_password_hex"]
    print("ok: pyhpke's own KEY_INIT round-trips")
    print("3 passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
