"""What makes the audit trail provable, in plain Python (no Django, no database).

Everything an auditor needs to check AgentDesk's evidence lives here, so the same code seals
events and checkpoints in the application and checks them offline:

- **Event hashes.** An event's `hash` is the SHA-256 of the canonical JSON of exactly the
  fields in `HASHED_FIELDS` (all of them are in every export). Its payload (`data` and
  `reason`) is hashed separately into `payload_digest`, so retention can remove a payload
  while the chain still verifies.
- **Signed notes.** Checkpoints are C2SP signed notes (https://c2sp.org/signed-note) with
  Ed25519 keys: the key formats are those of Go's `golang.org/x/mod/sumdb/note`, so any
  implementation of that format can check them.
- **Checkpoints.** A checkpoint is a C2SP `tlog-checkpoint` body: origin, size (the last
  sequence number of the chain) and root (the chain's head hash, base64), then the
  extension lines `time <ISO 8601 UTC>` and `prev <base64 SHA-256 of the previous
  checkpoint's whole note>` (absent on a log's first checkpoint). The "root" is the head of
  a hash chain, not of a Merkle tree: proving that an event is covered means recomputing
  the chain from it up to the checkpoint.
- **Export manifests.** A JSON object describing one export file (query, rows, first and
  last sequence number and hash, the file's SHA-256, the covering checkpoint) signed with
  the same key over its canonical JSON.

Run `python -m audit.proof verify-export FILE --key VERIFIER_KEY` to check an export with
nothing but this file and the `cryptography` package.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import struct
import sys
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

# --- events ---------------------------------------------------------------------------------

HASHED_FIELDS = (
    "tenant",
    "seq",
    "created_at",
    "actor_type",
    "actor_user",
    "actor_label",
    "action",
    "object_type",
    "object_id",
    "run_id",
    "step_id",
    "role_version_id",
    "request_id",
    "client_ip",
    "user_agent",
    "payload_digest",
    "prev_hash",
)
# An export row: the hashed fields, the payload (empty once redacted) and the hash.
EXPORT_COLUMNS = (*HASHED_FIELDS, "reason", "data", "payload_redacted_at", "hash")
# Columns holding an integer or nothing; in CSV nothing is the empty cell.
INTEGER_FIELDS = frozenset({"tenant", "seq", "actor_user", "run_id", "step_id", "role_version_id"})
NULLABLE_TEXT_FIELDS = frozenset({"client_ip", "payload_redacted_at"})
# A CSV cell starting with one of these is prefixed with "'" (and so is one starting with
# "'"), so a spreadsheet shows it as text instead of running it as a formula.
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "'")


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces, ASCII only: the bytes every digest here is taken over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def payload_digest(*, data: Any, reason: str) -> str:
    return sha256_hex(canonical_json({"data": data, "reason": reason}))


def event_hash(fields: Mapping[str, Any]) -> str:
    """The hash of an event from its hashed fields (values as JSON types)."""
    return sha256_hex(canonical_json({name: fields[name] for name in HASHED_FIELDS}))


def row_problems(row: Mapping[str, Any]) -> list[str]:
    """What is wrong with one exported row on its own (empty when it checks out)."""
    problems = []
    if row.get("payload_redacted_at") is None and (
        payload_digest(data=row["data"], reason=row["reason"]) != row["payload_digest"]
    ):
        problems.append("its payload (data, reason) does not match its payload digest")
    if event_hash(row) != row["hash"]:
        problems.append("its content does not match its hash")
    return problems


def csv_escape(text: str) -> str:
    return "'" + text if text.startswith(FORMULA_TRIGGERS) else text


def csv_unescape(text: str) -> str:
    return text[1:] if text.startswith("'") else text


def csv_cells(row: Mapping[str, Any]) -> list[str]:
    """One export row as CSV cells: nothing as the empty cell, `data` as JSON text."""
    cells = []
    for name in EXPORT_COLUMNS:
        value = row[name]
        if name == "data":
            value = json.dumps(value, sort_keys=True, ensure_ascii=False)
        cells.append("" if value is None else csv_escape(str(value)))
    return cells


def row_from_csv(cells: list[str]) -> dict[str, Any]:
    if len(cells) != len(EXPORT_COLUMNS):
        raise ValueError(f"expected {len(EXPORT_COLUMNS)} cells, found {len(cells)}")
    row: dict[str, Any] = {}
    for name, cell in zip(EXPORT_COLUMNS, cells, strict=True):
        text = csv_unescape(cell)
        if name == "data":
            row[name] = json.loads(text)
        elif name in INTEGER_FIELDS:
            row[name] = int(text) if text else None
        elif name in NULLABLE_TEXT_FIELDS:
            row[name] = text or None
        else:
            row[name] = text
    return row


# --- signed notes ---------------------------------------------------------------------------

ALG_ED25519 = 1
SIGNATURE_PREFIX = "\u2014 "  # an em dash and a space start each signature line


class ProofError(Exception):
    """A key, note, checkpoint or manifest is malformed or does not verify."""


def _key_hash(name: str, public: bytes) -> int:
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([ALG_ED25519]) + public).digest()
    return struct.unpack(">I", digest[:4])[0]


def _check_name(name: str) -> None:
    if not name or any(c.isspace() or c == "+" for c in name):
        raise ProofError(f"invalid key name {name!r}: no spaces or '+'")


@dataclass(frozen=True)
class Verifier:
    name: str
    public: bytes

    @property
    def key_hash(self) -> int:
        return _key_hash(self.name, self.public)

    def encode(self) -> str:
        """`name+hash+base64(alg, key)`, the verifier key an auditor pins."""
        key = base64.b64encode(bytes([ALG_ED25519]) + self.public).decode()
        return f"{self.name}+{self.key_hash:08x}+{key}"

    @classmethod
    def decode(cls, text: str) -> Verifier:
        try:
            name, hash_hex, key_b64 = text.strip().split("+", 2)
            raw = base64.b64decode(key_b64, validate=True)
            expected = int(hash_hex, 16)
        except ValueError:
            raise ProofError("not a verifier key (name+hash+key)") from None
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise ProofError("not an Ed25519 verifier key")
        verifier = cls(name=name, public=raw[1:])
        if verifier.key_hash != expected:
            raise ProofError("the verifier key's hash does not match its name and key")
        return verifier

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public).verify(signature, message)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class Signer:
    name: str
    seed: bytes = field(repr=False)

    @classmethod
    def generate(cls, name: str) -> Signer:
        _check_name(name)
        from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

        seed = Ed25519PrivateKey.generate().private_bytes(
            Encoding.Raw, PrivateFormat.Raw, NoEncryption()
        )
        return cls(name=name, seed=seed)

    @property
    def _key(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self.seed)

    @property
    def verifier(self) -> Verifier:
        public = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return Verifier(name=self.name, public=public)

    def encode(self) -> str:
        """`PRIVATE+KEY+name+hash+base64(alg, seed)`, as kept in the key file."""
        key = base64.b64encode(bytes([ALG_ED25519]) + self.seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.verifier.key_hash:08x}+{key}"

    @classmethod
    def decode(cls, text: str) -> Signer:
        parts = text.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise ProofError("not a signer key (PRIVATE+KEY+name+hash+key)")
        try:
            raw = base64.b64decode(parts[4], validate=True)
        except ValueError:
            raise ProofError("the signer key is not base64") from None
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise ProofError("not an Ed25519 signer key")
        signer = cls(name=parts[2], seed=raw[1:])
        if f"{signer.verifier.key_hash:08x}" != parts[3]:
            raise ProofError("the signer key's hash does not match its name and key")
        return signer

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


def sign_note(body: str, signer: Signer) -> str:
    """The signed note of `body` (text whose every line ends with a newline)."""
    if not body.endswith("\n") or "\n\n" in body:
        raise ProofError("a note's text ends with a newline and has no blank line")
    signature = struct.pack(">I", signer.verifier.key_hash) + signer.sign(body.encode())
    return f"{body}\n{SIGNATURE_PREFIX}{signer.name} {base64.b64encode(signature).decode()}\n"


def open_note(note: str, verifier: Verifier) -> str:
    """The body of a signed note after checking `verifier`'s signature on it."""
    body, sep, signatures = note.rpartition("\n\n")
    if not sep:
        raise ProofError("not a signed note: no blank line before the signatures")
    body += "\n"
    for line in signatures.splitlines():
        if not line.startswith(SIGNATURE_PREFIX):
            raise ProofError("not a signed note: a signature line is malformed")
        name, _, encoded = line[len(SIGNATURE_PREFIX) :].partition(" ")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except ValueError:
            raise ProofError("not a signed note: a signature is not base64") from None
        if name != verifier.name or len(raw) != 68:
            continue
        if struct.unpack(">I", raw[:4])[0] != verifier.key_hash:
            continue
        if verifier.verify(body.encode(), raw[4:]):
            return body
        raise ProofError(f"the signature of {name} does not verify: the note was altered")
    raise ProofError(f"the note carries no signature by the key {verifier.name}")


# --- checkpoints ----------------------------------------------------------------------------

EMPTY_ROOT = bytes(32)


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int  # the chain's last sequence number (0: no event yet)
    head_hash: str  # hex; "" when size is 0
    time: datetime
    prev: str = ""  # hex SHA-256 of the previous checkpoint's note; "" for the first

    def body(self) -> str:
        root = bytes.fromhex(self.head_hash) if self.head_hash else EMPTY_ROOT
        lines = [
            self.origin,
            str(self.size),
            base64.b64encode(root).decode(),
            f"time {self.time.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%S.%fZ')}",
        ]
        if self.prev:
            lines.append(f"prev {base64.b64encode(bytes.fromhex(self.prev)).decode()}")
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, body: str) -> Checkpoint:
        lines = body.rstrip("\n").split("\n")
        if len(lines) < 4:
            raise ProofError("a checkpoint has an origin, a size, a root and a time")
        origin, size_text, root_text, *extensions = lines
        try:
            size = int(size_text)
            root = base64.b64decode(root_text, validate=True)
        except ValueError:
            raise ProofError("a checkpoint's size or root is malformed") from None
        if size < 0 or len(root) != 32 or (size == 0) != (root == EMPTY_ROOT):
            raise ProofError("a checkpoint's size or root is malformed")
        values = dict(line.partition(" ")[::2] for line in extensions)
        try:
            moment = datetime.strptime(values["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
            prev = base64.b64decode(values["prev"], validate=True).hex() if "prev" in values else ""
        except (KeyError, ValueError):
            raise ProofError("a checkpoint's time or prev line is malformed") from None
        return cls(
            origin=origin,
            size=size,
            head_hash=root.hex() if size else "",
            time=moment,
            prev=prev,
        )


def note_digest(note: str) -> str:
    return sha256_hex(note.encode())


def open_checkpoint(note: str, verifier: Verifier) -> Checkpoint:
    return Checkpoint.parse(open_note(note, verifier))


# --- manifests ------------------------------------------------------------------------------

MANIFEST_FORMAT = "agentdesk-audit-manifest/1"


def sign_manifest(fields: Mapping[str, Any], signer: Signer) -> dict[str, Any]:
    """`fields` with the format, the verifier key and a signature over all of it."""
    manifest = {**fields, "format": MANIFEST_FORMAT, "key": signer.verifier.encode()}
    manifest.pop("signature", None)
    signature = signer.sign(canonical_json(manifest))
    return {**manifest, "signature": base64.b64encode(signature).decode()}


def check_manifest(manifest: Mapping[str, Any], verifier: Verifier) -> None:
    """Raise ProofError unless `verifier` signed exactly this manifest."""
    if not isinstance(manifest, Mapping) or manifest.get("format") != MANIFEST_FORMAT:
        raise ProofError("not an AgentDesk audit manifest")
    unsigned = {k: v for k, v in manifest.items() if k != "signature"}
    try:
        signature = base64.b64decode(str(manifest.get("signature", "")), validate=True)
    except ValueError:
        raise ProofError("the manifest's signature is not base64") from None
    if not verifier.verify(canonical_json(unsigned), signature):
        raise ProofError("the manifest's signature does not verify with the pinned key")


# --- checking an export offline -------------------------------------------------------------


@dataclass
class ExportReport:
    rows: int = 0
    problems: list[str] = field(default_factory=list)
    redacted: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


@contextmanager
def open_bundle(path: Path) -> Iterator[tuple[Callable[[], BinaryIO], str, dict[str, Any]]]:
    """(a function opening the export file, its name, the manifest) of a ZIP bundle or of
    FILE beside FILE.manifest.json; the file is read as a stream, never whole."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as bundle:
            try:
                manifest = json.loads(bundle.read("manifest.json"))
            except KeyError:
                raise ProofError("the bundle has no manifest.json") from None
            name = (
                str(manifest.get("file", {}).get("name", "")) if isinstance(manifest, dict) else ""
            )
            if name not in bundle.namelist():
                raise ProofError(f"the bundle has no {name!r}, the file its manifest names")
            yield (lambda: bundle.open(name)), name, manifest
        return
    manifest_path = path.with_name(path.name + ".manifest.json")
    if not manifest_path.is_file():
        raise ProofError(f"no manifest beside the file (expected {manifest_path})")
    yield (lambda: path.open("rb")), path.name, json.loads(manifest_path.read_text())


def file_digest(opener: Callable[[], BinaryIO]) -> tuple[str, int]:
    """(SHA-256 hex, size) of a stream, read in chunks."""
    digest, size = hashlib.sha256(), 0
    with opener() as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def iter_rows(stream: BinaryIO, *, format: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) for each row of an export file; ValueError on a malformed one."""
    text = io.TextIOWrapper(stream, encoding="utf-8", newline="")
    if format == "jsonl":
        for number, line in enumerate(text, start=1):
            row = json.loads(line)
            if not isinstance(row, dict) or set(row) != set(EXPORT_COLUMNS):
                raise ValueError(f"line {number}: not an export row")
            yield number, row
        return
    if format != "csv":
        raise ValueError(f"unknown format {format!r}")
    reader = csv.reader(text)
    header = next(reader, None)
    if header != list(EXPORT_COLUMNS):
        raise ValueError("line 1: the header is not the export's columns")
    for cells in reader:
        yield reader.line_num, row_from_csv(cells)


def check_rows(rows: Iterable[tuple[int, Mapping[str, Any]]], *, contiguous: bool, report) -> list:
    """Check each row and, for a contiguous export, the links between them; return
    [first row, last row] (or [] for none)."""
    first = last = None
    for number, row in rows:
        report.rows += 1
        if row.get("payload_redacted_at") is not None:
            report.redacted += 1
        for problem in row_problems(row):
            report.problems.append(f"seq {row['seq']} (line {number}): {problem}")
        if contiguous and last is not None:
            if row["seq"] != last["seq"] + 1:
                report.problems.append(
                    f"seq {row['seq']} (line {number}): expected seq {last['seq'] + 1} "
                    "(a row is missing or out of order)"
                )
            elif row["prev_hash"] != last["hash"]:
                report.problems.append(
                    f"seq {row['seq']} (line {number}): its previous hash is not the hash "
                    "of the row before"
                )
        first = first or row
        last = row
    return [] if first is None else [first, last]


def _check_file(opener, name: str, manifest: Mapping[str, Any], report: ExportReport) -> None:
    described = manifest["file"]
    if name != described["name"]:
        report.problems.append(
            f"the file is {name!r}, the manifest describes {described['name']!r}"
        )
    sha256, size = file_digest(opener)
    if sha256 != described["sha256"] or size != described["bytes"]:
        report.problems.append(
            "the file's SHA-256 is not the manifest's: the file was altered, cut, or the "
            "manifest belongs to another export"
        )


def verify_export(path: Path, verifier: Verifier) -> ExportReport:
    """Check an export bundle with only the pinned verifier key: the manifest's signature,
    the covering checkpoint's signature, the file's SHA-256 and size, each row's hashes, and
    for an export of a whole period the links between rows and its ends."""
    report = ExportReport()
    try:
        with open_bundle(path) as (opener, name, manifest):
            check_manifest(manifest, verifier)
            checkpoint = open_checkpoint(str(manifest.get("checkpoint", "")), verifier)
            _check_file(opener, name, manifest, report)
            with opener() as stream:
                ends = check_rows(
                    iter_rows(stream, format=manifest["file"]["format"]),
                    contiguous=bool(manifest["contiguous"]),
                    report=report,
                )
    except (ProofError, OSError, zipfile.BadZipFile) as exc:
        report.problems.append(str(exc))
        return report
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        report.problems.append(f"the file cannot be read as an export: {exc}")
        return report
    contiguous = bool(manifest["contiguous"])
    if report.rows != manifest["rows"]:
        report.problems.append(f"{report.rows} rows, the manifest says {manifest['rows']}")
    if ends:
        first, last = ends
        for end, row in (("first", first), ("last", last)):
            if (row["seq"], row["hash"]) != (manifest[f"{end}_seq"], manifest[f"{end}_hash"]):
                report.problems.append(f"the {end} row is not the one the manifest names")
        if contiguous and manifest["query"].get("since") is None and first["prev_hash"] != "":
            report.problems.append("the export of a whole chain does not start at its start")
        if last["seq"] > checkpoint.size:
            report.problems.append("the export goes past its covering checkpoint")
        elif last["seq"] == checkpoint.size and last["hash"] != checkpoint.head_hash:
            report.problems.append("the last row's hash is not the checkpoint's head")
        if contiguous and manifest["query"].get("until") is None and last["seq"] != checkpoint.size:
            report.problems.append("the export to now does not end at its checkpoint's head")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m audit.proof",
        description="Check AgentDesk audit evidence offline.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("verify-export", help="check an export bundle")
    check.add_argument("file", type=Path, help="the .zip bundle, or the file beside its manifest")
    check.add_argument("--key", required=True, help="the pinned verifier key")
    args = parser.parse_args(argv)
    try:
        verifier = Verifier.decode(args.key)
    except ProofError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = verify_export(args.file, verifier)
    for problem in report.problems:
        print(f"BROKEN: {problem}")
    if not report.ok:
        return 1
    print(f"ok: {report.rows} rows ({report.redacted} with their payload removed by retention)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
