"""The bindings document the operator writes and the service reads (one file, content-hashed)."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import gzip
import hashlib
import json
import re
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gitlab_sts.core.bindings import API_VERSION, KIND, CompiledBinding, compile_binding, compile_manifest
from gitlab_sts.core.errors import CompileError, ConfigError

DOC_FILE = "bindings.json"
DOC_FILE_GZ = "bindings.json.gz"
DOC_KIND = "GitLabAWSBindingSet"
# A ConfigMap holds at most 1 MiB; past this the document is stored gzipped in binaryData.
GZIP_THRESHOLD = 700 * 1024
# libyaml's parser when PyYAML has it (about ten times faster for large folders), else the pure-Python one.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# libyaml nests without limit where the pure-Python parser ran out of stack; a manifest is ~6 deep.
MAX_YAML_DEPTH = 100
# The canonical JSON of the document's content (what its sha256 covers); one encoder for every entry.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))
_DECODER = json.JSONDecoder()
# The framing render_document writes around the bindings array (keys sorted, no spaces).
_HEAD = b'{"apiVersion":"' + API_VERSION.encode() + b'","bindings":['
_TAIL = re.compile(rb'\],"kind":"' + DOC_KIND.encode() + rb'","sha256":"([0-9a-f]{64})"\}')
_TAIL_LENGTH = len(f'],"kind":"{DOC_KIND}","sha256":"{"0" * 64}"}}')
_ENTRY_START = '{"name":"'


def _too_deep(value: Any) -> bool:
    """Whether parsed YAML nests lists or mappings deeper than MAX_YAML_DEPTH (iterative: no recursion)."""
    # Aliases share objects (and may form cycles): revisit a container only when reached deeper, so the
    # walk costs at most nodes x MAX_YAML_DEPTH steps even for "billion laughs" documents.
    deepest: dict[int, int] = {}
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, dict | list) or deepest.get(id(item), -1) >= depth:
            continue
        if depth >= MAX_YAML_DEPTH:
            return True
        deepest[id(item)] = depth
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children)
    return False


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while thousands of bindings are built.

    Each binding allocates many containers, which triggers repeated full collections of the whole heap:
    half the load time for 10,000 bindings. Nothing here forms garbage cycles; collection resumes after.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass(frozen=True)
class Rejected:
    """A binding that did not compile, and why."""

    key: str
    error: str


@dataclass(frozen=True)
class LoadedBindings:
    """Compiled bindings from a folder, plus what was rejected and the content hash."""

    bindings: tuple[CompiledBinding, ...]
    rejected: tuple[Rejected, ...] = ()
    digest: str = ""
    source: str = ""
    # The document exactly as read (empty for manifests): saving it avoids re-rendering 10,000 bindings.
    raw: bytes = field(default=b"", repr=False)
    # What each document entry became, by the entry's canonical JSON: the next parse of a changed document
    # compiles only the entries not in here (empty for manifests).
    outcomes: Mapping[str, CompiledBinding | Rejected] = field(default_factory=dict, repr=False, compare=False)
    # What each manifest file's documents became, by file name and sha256 of its bytes (None: not a
    # binding): the next load of the folder parses only new or changed files (empty for a document).
    files: Mapping[tuple[str, bytes], tuple[CompiledBinding | Rejected | None, ...]] = field(
        default_factory=dict, repr=False, compare=False)


def normalised_spec(binding: CompiledBinding) -> dict[str, Any]:
    """The spec as canonical JSON data (camelCase, defaults dropped)."""
    return binding.spec.model_dump(mode="json", by_alias=True, exclude_defaults=True)


def render_document(bindings: Iterable[CompiledBinding]) -> tuple[bytes, str]:
    """Serialise compiled bindings deterministically; returns (bytes, sha256 hex of the content)."""
    with _collector_paused():
        return _render_document(bindings)


def _render_document(bindings: Iterable[CompiledBinding]) -> tuple[bytes, str]:
    return render_entries([entry_text(b) for b in sorted(bindings, key=lambda b: (b.namespace, b.name))])


def entry_text(binding: CompiledBinding) -> str:
    """A binding's entry of the document as canonical JSON (what the operator keeps instead of the binding)."""
    return _CANONICAL.encode({"namespace": binding.namespace, "name": binding.name, "spec": normalised_spec(binding)})


def render_entries(texts: list[str]) -> tuple[bytes, str]:
    """The document for entry texts already sorted by (namespace, name); same bytes as render_document."""
    canonical = "[" + ",".join(texts) + "]"
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    # json.dumps(doc, sort_keys=True) order: apiVersion, bindings, kind, sha256 (see _HEAD and _TAIL).
    raw = b"".join((_HEAD, ",".join(texts).encode(), f'],"kind":"{DOC_KIND}","sha256":"{digest}"}}'.encode()))
    return raw, digest


def configmap_payload(bindings: Iterable[CompiledBinding]) -> tuple[dict[str, str], dict[str, bytes], str]:
    """Split into ConfigMap data / binaryData: plain JSON, or gzip when it would pass ~700 KiB."""
    return payload_of(*render_document(bindings))


def payload_of(raw: bytes, digest: str) -> tuple[dict[str, str], dict[str, bytes], str]:
    """ConfigMap data / binaryData of a rendered document: plain JSON, or gzip when it would pass ~700 KiB."""
    if len(raw) <= GZIP_THRESHOLD:
        return {DOC_FILE: raw.decode()}, {}, digest
    # mtime=0 keeps the gzip bytes deterministic for the same content.
    return {}, {DOC_FILE_GZ: gzip.compress(raw, mtime=0)}, digest


def parse_document(raw: bytes, source: str, previous: LoadedBindings | None = None) -> LoadedBindings:
    """Parse a bindings document (a bad entry is rejected, not fatal), compiling only what `previous` lacks.

    An entry whose canonical JSON is unchanged since `previous` keeps its compiled binding or rejection:
    compiling is a function of that text alone, so the result is the same as a parse without `previous`.
    """
    if previous is not None and previous.raw and raw == previous.raw:
        return previous if previous.source == source else dataclasses.replace(previous, source=source)
    with _collector_paused():
        return _parse_document(raw, source, previous.outcomes if previous is not None else {})


def _split_rendered(raw: bytes, known: Mapping[str, object]) -> tuple[list[str], dict[int, Any], str] | None:
    """Split a document framed as render_document writes it into entries without parsing the known ones.

    Returns each entry's canonical JSON, the parsed new entries by position, and the stated sha256; None
    for any other layout or anything in doubt (json.loads then reads the document the usual way).
    """
    if len(raw) < len(_HEAD) + _TAIL_LENGTH or not raw.startswith(_HEAD):
        return None
    tail = _TAIL.fullmatch(raw, len(raw) - _TAIL_LENGTH)
    if tail is None:
        return None
    try:
        inner = raw[len(_HEAD):len(raw) - _TAIL_LENGTH].decode()  # the array without its brackets
    except UnicodeDecodeError:
        return None
    # A canonical entry starts with its first key in sorted order ("name" < "namespace" < "spec"). The
    # separator's unescaped quotes cannot occur inside a JSON string, so every cut is between values or
    # inside one; a cut inside an entry leaves pieces that are neither known texts nor whole values.
    pieces = inner.split("," + _ENTRY_START) if inner else []
    pieces[1:] = [_ENTRY_START + piece for piece in pieces[1:]]
    texts: list[str] = []
    fresh: dict[int, Any] = {}
    for i, piece in enumerate(pieces):
        if piece in known:  # a known text is the canonical JSON of one whole entry
            texts.append(piece)
            continue
        try:
            entry, stop = _DECODER.raw_decode(piece)
        except (ValueError, RecursionError):
            return None
        if stop != len(piece):
            return None
        fresh[i] = entry
        texts.append(_CANONICAL.encode(entry))
    return texts, fresh, tail.group(1).decode()


def _parse_document(raw: bytes, source: str, known: Mapping[str, CompiledBinding | Rejected]) -> LoadedBindings:
    claimed: object  # the sha256 the document states
    split = _split_rendered(raw, known) if known else None
    if split is not None:
        texts, fresh, claimed = split
    else:
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: deeply nested arrays or objects
            raise ConfigError(f"{source}: not valid JSON") from None
        if not isinstance(doc, dict) or doc.get("kind") != DOC_KIND or not isinstance(doc.get("bindings"), list):
            raise ConfigError(f"{source}: not a {DOC_KIND} document")
        fresh, claimed = dict(enumerate(doc["bindings"])), doc.get("sha256")
        texts = [_CANONICAL.encode(entry) for entry in fresh.values()]
    # The texts joined as json.dumps writes the list are what the sha256 covers; they key the outcomes too.
    digest = hashlib.sha256(("[" + ",".join(texts) + "]").encode()).hexdigest()
    if claimed != digest:
        raise ConfigError(f"{source}: content hash does not match (truncated or edited by hand?)")
    outcomes: dict[str, CompiledBinding | Rejected] = {}
    good: list[CompiledBinding] = []
    bad: list[Rejected] = []
    for i, text in enumerate(texts):
        outcome = known.get(text)
        if outcome is None:
            outcome = _compile_entry(fresh[i], text, source, i)
        outcomes[text] = outcome
        if isinstance(outcome, CompiledBinding):
            good.append(outcome)
        else:
            bad.append(outcome)
    return LoadedBindings(tuple(good), tuple(bad), digest, source, raw=raw, outcomes=outcomes)


def _compile_entry(entry: Any, text: str, source: str, i: int) -> CompiledBinding | Rejected:
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{source}: bindings[{i}] is not an object")
    ns, name, spec = entry.get("namespace"), entry.get("name"), entry.get("spec")
    if not isinstance(ns, str) or not isinstance(name, str) or not isinstance(spec, Mapping):
        raise ConfigError(f"{source}: bindings[{i}] needs namespace, name and spec")
    # A compiled binding does not depend on key order (fields are read by name), but validation names
    # unknown fields in input order: a rejection is worded from the canonical text instead, so that reusing
    # it does not depend on the key order of the document it was first read from.
    # The operator validated every entry it wrote, CEL included: conditions compile on first use (a program
    # per binding held ~60 KiB; 10,000 of them did not fit the exchange pod), and a bad one denies then.
    try:
        return compile_binding(ns, name, spec, lazy_cel=True)
    except CompileError:
        pass
    try:
        return compile_binding(ns, name, json.loads(text)["spec"], lazy_cel=True)
    except CompileError as exc:
        return Rejected(f"{ns}/{name}", str(exc))


def load_manifests(paths: Iterable[Path], previous: LoadedBindings | None = None) -> LoadedBindings:
    """Compile GitLabAWSBinding manifests from YAML files (what users kubectl apply), reusing unchanged files."""
    with _collector_paused():
        return _load_manifests(paths, previous.files if previous is not None else {})


FileOutcomes = tuple[CompiledBinding | Rejected | None, ...]


def _file_outcomes(name: str, text: bytes) -> FileOutcomes:
    """What each YAML document of one file becomes (a function of the file's name and bytes alone)."""
    try:
        docs = list(yaml.load_all(text, Loader=_SAFE_LOADER))  # noqa: S506 (a safe loader)
        if any(_too_deep(doc) for doc in docs):
            raise yaml.YAMLError(f"nested deeper than {MAX_YAML_DEPTH} levels")
    # RecursionError: deeply nested flow collections exhaust the pure-Python parser's stack.
    except (yaml.YAMLError, RecursionError) as exc:
        raise ConfigError(f"{name}: not valid YAML: {exc}") from None
    out: list[CompiledBinding | Rejected | None] = []
    for i, doc in enumerate(docs):
        if doc is None or not isinstance(doc, Mapping) or doc.get("kind") != KIND:
            out.append(None)  # other kinds may share a file (e.g. a Namespace); they are not ours
            continue
        try:
            out.append(compile_manifest(doc))
        except CompileError as exc:
            meta = doc.get("metadata")
            meta = meta if isinstance(meta, Mapping) else {}
            out.append(Rejected(f"{meta.get('namespace', 'default')}/{meta.get('name', f'{name}#{i}')}", str(exc)))
    return tuple(out)


def _load_manifests(paths: Iterable[Path], known: Mapping[tuple[str, bytes], FileOutcomes]) -> LoadedBindings:
    good: dict[str, CompiledBinding] = {}
    bad: list[Rejected] = []
    hasher = hashlib.sha256()
    files: dict[tuple[str, bytes], FileOutcomes] = {}
    for path in sorted(paths):
        text = path.read_bytes()
        hasher.update(path.name.encode() + b"\0" + text + b"\0")
        key = (path.name, hashlib.sha256(text).digest())
        outcomes = known.get(key)
        if outcomes is None:
            outcomes = _file_outcomes(path.name, text)
        files[key] = outcomes
        # Duplicates span files, so they are decided here, in file order, on every load.
        for i, outcome in enumerate(outcomes):
            if outcome is None:
                continue
            if isinstance(outcome, Rejected):
                bad.append(outcome)
            elif outcome.key in good:
                bad.append(Rejected(outcome.key, f"defined twice (again in {path.name}#{i})"))
            else:
                good[outcome.key] = outcome
    return LoadedBindings(tuple(good.values()), tuple(bad), hasher.hexdigest(), "manifests", files=files)


def load_bindings_dir(directory: Path, previous: LoadedBindings | None = None) -> LoadedBindings:
    """Load a bindings folder: the operator's document if present (reusing `previous`), else YAML manifests."""
    if not directory.is_dir():
        raise ConfigError(f"{directory}: bindings folder does not exist")
    gz, plain = directory / DOC_FILE_GZ, directory / DOC_FILE
    if gz.exists():
        try:
            raw = gzip.decompress(gz.read_bytes())
        # zlib.error (a corrupt deflate stream) is neither OSError nor EOFError.
        except (OSError, EOFError, zlib.error):
            raise ConfigError(f"{DOC_FILE_GZ}: not valid gzip") from None
        return parse_document(raw, DOC_FILE_GZ, previous)
    if plain.exists():
        return parse_document(plain.read_bytes(), DOC_FILE, previous)
    files = [p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()]
    return load_manifests(files, previous)
