#!/usr/bin/env python3
"""Cross-checks wsgate's HPKE uses (X25519 / HKDF-SHA256 / AES-256-GCM,
RFC 9180) against pyhpke, an independent implementation: KEY_INIT (mode_psk,
protocol.md §5.2) and the sealed login's request 1 (mode_base with the
exporter, protocol.md §4.1), plus the login's boxes with the `cryptography`
package's AES-GCM and HKDF.

  check (default): pyhpke opens testdata/key_init.json (sealed by the Rust
                   core) and testdata/key_init_pyhpke.json (sealed by pyhpke,
                   opened by the Rust test `pyhpke_sealed_key_init_opens`);
                   reproduces testdata/login_seal.json byte for byte from its
                   fixed ephemeral keys, opens and re-makes every box, and
                   checks testdata/login_seal_pyhpke.json (sealed by pyhpke,
                   opened by the Rust test `pyhpke_sealed_login_opens`).
  --write:         reseals testdata/key_init_pyhpke.json and
                   testdata/login_seal_pyhpke.json with pyhpke.

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
    passed = 3 + check_login_seal()
    print(f"{passed} passed, 0 failed")
    return 0


def exchange_key(login_key: bytes, sid: bytes, info: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=sid, info=info).derive(login_key)


def box_nonce(m: int) -> bytes:
    return bytes(11) + bytes([m])


def check_login_seal() -> int:
    """The sealed login (protocol.md §4.1); returns the number of checks passed."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    v = json.loads((TESTDATA / "login_seal.json").read_text())
    info, exporter = v["hpke_info"].encode(), v["exporter_context"].encode()
    sk = SUITE.kem.deserialize_private_key(bytes.fromhex(v["server_sk_hex"]))
    pk = SUITE.kem.deserialize_public_key(b64u_decode(v["server_pk_b64u"]))
    for case in v["cases"]:
        name = case["name"]
        body = json.loads(case["request_1_body"])
        assert body["kid"] == v["kid"], name
        # Open what the Rust core sealed, and export the same login key.
        ctx = SUITE.create_recipient_context(b64u_decode(body["enc"]), sk, info=info)
        plain = ctx.open(b64u_decode(body["ct"]), aad=b"")
        assert plain == case["request_1_inner"].encode(), f"{name}: request 1 plaintext"
        assert len(plain) % 64 == 0, f"{name}: padding"
        login_key = ctx.export(exporter, 32)
        assert login_key.hex() == case["login_key_hex"], f"{name}: login_key"
        # Seal from the same ephemeral key: the same bytes.
        eks = SUITE.kem.derive_key_pair(bytes.fromhex(case["ephemeral_ikm_hex"]))
        enc, sctx = SUITE.create_sender_context(pk, info=info, eks=eks)
        assert b64u_encode(enc) == case["enc_b64u"], f"{name}: enc from the fixed ephemeral key"
        assert b64u_encode(sctx.seal(plain, aad=b"")) == body["ct"], f"{name}: request 1 ct"
        assert sctx.export(exporter, 32) == login_key, f"{name}: sender's export"
        # The boxes.
        sid = b64u_decode(case["sid"])
        key = exchange_key(login_key, sid, v["exchange_info"].encode())
        assert key.hex() == case["exchange_key_hex"], f"{name}: exchange_key"
        aead = AESGCM(key)
        for m, field, inner in [(1, "reply_1_body", "reply_1_inner"), (2, "request_2_body", "request_2_inner"), (3, "reply_2_body", "reply_2_inner")]:
            ct = b64u_decode(json.loads(case[field])["ct"])
            assert aead.decrypt(box_nonce(m), ct, b"") == case[inner].encode(), f"{name}: box {m}"
            assert aead.encrypt(box_nonce(m), case[inner].encode(), b"") == ct, f"{name}: box {m} re-sealed"
            try:
                aead.decrypt(box_nonce(m % 3 + 1), ct, b"")
            except Exception:
                pass
            else:
                raise AssertionError(f"{name}: box {m} opened under another number")
    print(f"ok: pyhpke and cryptography reproduce the sealed login of {len(v['cases'])} cases byte for byte")

    out = TESTDATA / "login_seal_pyhpke.json"
    if "--write" in sys.argv:
        case = v["cases"][0]
        enc, sctx = SUITE.create_sender_context(pk, info=info)
        body = {"kid": v["kid"], "enc": b64u_encode(enc), "ct": b64u_encode(sctx.seal(case["request_1_inner"].encode(), aad=b""))}
        out.write_text(json.dumps({
            "description": "A sealed login request 1 made by pyhpke (independent RFC 9180 implementation, random ephemeral key) for the Rust core to open: mode_base, info = hpke_info, login_key = Export(exporter_context, 32).",
            "server_sk_hex": v["server_sk_hex"],
            "hpke_info": v["hpke_info"],
            "exporter_context": v["exporter_context"],
            "request_1_body": json.dumps(body, separators=(",", ":")),
            "request_1_inner": case["request_1_inner"],
            "login_key_hex": sctx.export(exporter, 32).hex(),
        }, indent=2, sort_keys=True) + "\n")
        print(f"wrote {out}")
    theirs = json.loads(out.read_text())
    body = json.loads(theirs["request_1_body"])
    ctx = SUITE.create_recipient_context(b64u_decode(body["enc"]), sk, info=info)
    assert ctx.open(b64u_decode(body["ct"]), aad=b"") == theirs["request_1_inner"].encode()
    assert ctx.export(exporter, 32).hex() == theirs["login_key_hex"]
    print("ok: pyhpke's own sealed request 1 round-trips")
    return 2


if __name__ == "__main__":
    sys.exit(main())
