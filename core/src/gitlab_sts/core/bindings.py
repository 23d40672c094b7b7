"""GitLabAWSBinding: the spec model, its compiler and the per-request evaluation."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import celpy
from celpy.adapter import json_to_cel
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError
from pydantic.alias_generators import to_camel

from gitlab_sts.core.claims import ACCESS_LEVELS
from gitlab_sts.core.errors import CompileError, FieldError
from gitlab_sts.core.patterns import glob_to_regex
from gitlab_sts.core.settings import check_issuer
from gitlab_sts.core.tags import MAX_TAGS, key_problem, sanitise_source_identity, sanitise_value

GROUP = "gitlab-sts.io"
VERSION = "v1alpha1"
KIND = "GitLabAWSBinding"
API_VERSION = f"{GROUP}/{VERSION}"
MAX_NAME = 128
ROLE_ARN = re.compile(r"^arn:aws(-[a-z]+)*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$", re.ASCII)
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class _Spec(BaseModel):
    # Only the camelCase names of the public contract, and no type coercion ("yes" is not true,
    # "12" is not a runner id): a binding means exactly what it says or it does not compile.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False, alias_generator=to_camel)


class ProjectSelector(_Spec):
    """Who: exactly one of a project path, a project id or a whole namespace (group)."""

    path: StrictStr | None = Field(None, min_length=1)
    id: StrictStr | None = Field(None, pattern=r"^[0-9]+$")
    namespace: StrictStr | None = Field(None, min_length=1)


class Rules(_Spec):
    """When: every rule given must hold."""

    refs: tuple[StrictStr, ...] | None = None
    ref_type: Literal["branch", "tag"] | None = None
    protected_ref: StrictBool | None = None
    environments: tuple[StrictStr, ...] | None = None
    protected_environment: StrictBool | None = None
    pipeline_sources: tuple[StrictStr, ...] | None = None
    runner_ids: tuple[StrictInt, ...] | None = None
    runner_environment: Literal["self-hosted", "gitlab-hosted"] | None = None
    min_access_level: Literal["guest", "planner", "reporter", "developer", "maintainer", "owner"] | None = None
    condition: StrictStr | None = None


class AwsTarget(_Spec):
    """What: the role and how the minted token looks."""

    role_arn: StrictStr
    audience: StrictStr | None = None
    token_lifetime_seconds: StrictInt | None = Field(None, ge=60, le=43200)
    session_tags: tuple[StrictStr, ...] = ()
    transitive_tags: tuple[StrictStr, ...] = ()
    source_identity: StrictStr | None = Field(None, min_length=1)
    # Let the minted token outlive the GitLab token's own exp (off by default).
    outlive_source_token: StrictBool = False


class BindingSpec(_Spec):
    """The spec of a GitLabAWSBinding as users write it."""

    issuer: StrictStr | None = None
    project: ProjectSelector
    rules: Rules = Rules()
    aws: AwsTarget


# RuleFailure.rule of a binding that the settings (trusted issuers, platform guard) refuse at exchange time.
SETTINGS_RULE = "settings"


@dataclass(frozen=True)
class RuleFailure:
    """The first rule a binding failed: which rule, on which claim, expected versus actual."""

    rule: str
    claim: str
    expected: Any
    actual: Any

    def as_dict(self) -> dict[str, Any]:
        """Render for JSON answers."""
        return {"rule": self.rule, "claim": self.claim, "expected": self.expected, "actual": self.actual}

    def sentence(self) -> str:
        """Render as words a job log reader can act on."""
        if self.rule == "rules.condition":
            return f"rules.condition: the CEL condition {self.expected!r} gave {self.actual!r}, not true"
        if self.rule == SETTINGS_RULE:
            return f"{self.actual} (settings {self.claim})"
        return f"{self.rule}: claim {self.claim} is {self.actual!r}, expected {self.expected}"


@dataclass(frozen=True)
class Grant:
    """What a matching binding gives: everything the minter needs."""

    subject: str
    role_arn: str
    audience: str
    lifetime: int
    tags: dict[str, str]
    transitive_tags: tuple[str, ...]
    source_identity: str | None


Check = Callable[[Mapping[str, Any]], RuleFailure | None]


@dataclass(frozen=True)
class CompiledBinding:
    """A binding ready to evaluate: its rules precompiled into checks."""

    namespace: str
    name: str
    spec: BindingSpec
    checks: tuple[Check, ...] = field(repr=False)

    @property
    def key(self) -> str:
        """namespace/name."""
        return f"{self.namespace}/{self.name}"

    @property
    def subject(self) -> str:
        """The sub of tokens minted for this binding."""
        return subject_for(self.namespace, self.name)

    def evaluate(self, claims: Mapping[str, Any]) -> RuleFailure | None:
        """Return the first failed rule, or None when every rule holds."""
        for check in self.checks:
            failure = check(claims)
            if failure is not None:
                return failure
        return None

    def grant(self, claims: Mapping[str, Any], *, default_audience: str, default_lifetime: int,
              max_lifetime: int) -> Grant | RuleFailure:
        """Build the grant for a matching token (source identity may still fail)."""
        aws = self.spec.aws
        tags = {name: sanitise_value(_claim_text(claims.get(name))) for name in aws.session_tags}
        source_identity = None
        if aws.source_identity:
            raw = claims.get(aws.source_identity)
            source_identity = sanitise_source_identity(_claim_text(raw)) if raw is not None else None
            if source_identity is None:
                return RuleFailure("aws.sourceIdentity", aws.source_identity,
                                   "2-64 characters usable as a source identity", raw)
        lifetime = min(aws.token_lifetime_seconds or default_lifetime, max_lifetime)
        return Grant(
            subject=self.subject, role_arn=aws.role_arn, audience=aws.audience or default_audience,
            lifetime=lifetime, tags=tags, transitive_tags=aws.transitive_tags,
            source_identity=source_identity,
        )


def subject_for(namespace: str, name: str) -> str:
    """The minted sub for a binding."""
    return f"system:gitlabawsbinding:{namespace}:{name}"


def _claim_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


ProjectKey = tuple[str, str]


def selector_key(sel: ProjectSelector) -> ProjectKey:
    """The one project key a selector names: ("id", id), ("path", path) or ("namespace", group), case-folded."""
    if sel.id is not None:
        return ("id", sel.id)
    if sel.path is not None:
        return ("path", sel.path.casefold())
    assert sel.namespace is not None
    return ("namespace", sel.namespace.casefold().rstrip("/"))


def project_keys(claims: Mapping[str, Any]) -> list[ProjectKey]:
    """Every key that names the token's project: its id, its path and each group above it.

    A selector matches a token exactly when selector_key(selector) is in this list; BindingIndex looks
    these keys up, and a single binding's project check tests membership.
    """
    keys: list[ProjectKey] = []
    project_id, project_path = claims.get("project_id"), claims.get("project_path")
    if isinstance(project_id, str):
        keys.append(("id", project_id))
    if isinstance(project_path, str):
        path = project_path.casefold()
        keys.append(("path", path))
        # Each group above the project: the path up to each "/" (a/b/c -> a, a/b).
        cut = path.find("/")
        while cut != -1:
            keys.append(("namespace", path[:cut]))
            cut = path.find("/", cut + 1)
    return keys


def _project_check(sel: ProjectSelector) -> Check:
    key = selector_key(sel)
    if sel.id is not None:
        rule, claim, expected = "project.id", "project_id", sel.id
    elif sel.path is not None:
        rule, claim, expected = "project.path", "project_path", sel.path
    else:
        rule, claim, expected = "project.namespace", "project_path", f"a project under {sel.namespace}/"
    return lambda c: None if key in project_keys(c) else RuleFailure(rule, claim, expected, c.get(claim))


def _globs_check(rule: str, claim: str, patterns: tuple[str, ...], errors: list[FieldError]) -> Check | None:
    compiled = []
    for i, p in enumerate(patterns):
        try:
            compiled.append(glob_to_regex(p))
        except ValueError as exc:
            errors.append(FieldError(f"spec.{rule}[{i}]", f"bad pattern {p!r}: {exc}"))
    if not patterns:
        errors.append(FieldError(f"spec.{rule}", "must list at least one pattern (omit the rule to allow any)"))

    def check(c: Mapping[str, Any]) -> RuleFailure | None:
        value = c.get(claim)
        if isinstance(value, str) and any(rx.fullmatch(value) for rx in compiled):
            return None
        return RuleFailure(rule, claim, f"one of {list(patterns)}", value)
    return check


def _equals_check(rule: str, claim: str, want: Any) -> Check:
    return lambda c: None if c.get(claim) == want else RuleFailure(rule, claim, want, c.get(claim))


def _member_check(rule: str, claim: str, allowed: tuple[Any, ...]) -> Check:
    def check(c: Mapping[str, Any]) -> RuleFailure | None:
        value = c.get(claim)
        # Same type as well as equal: in Python True == 1 and 12.0 == 12, and a set lookup would
        # raise TypeError on an unhashable (list or object) claim instead of denying.
        if any(type(value) is type(a) and value == a for a in allowed):
            return None
        return RuleFailure(rule, claim, f"one of {list(allowed)}", value)
    return check


def _access_check(minimum: str) -> Check:
    floor = ACCESS_LEVELS.index(minimum)

    def check(c: Mapping[str, Any]) -> RuleFailure | None:
        level = c.get("user_access_level")
        if isinstance(level, str) and level in ACCESS_LEVELS and ACCESS_LEVELS.index(level) >= floor:
            return None
        return RuleFailure("rules.minAccessLevel", "user_access_level", f"{minimum} or higher", level)
    return check


_CEL_ENV = celpy.Environment()
# Bound on the remembered results of one CEL condition (cleared, not evicted one by one, when full).
CEL_RESULT_CACHE = 1024
# Compiled CEL programs kept at once, shared by every binding with the same source text. A program is a lark
# parse tree of ~90 objects (~50 KiB): 10,000 bindings with their own conditions held ~500 MiB when every
# binding kept its own. Bindings keep only the source; a program is compiled on first use and evicted least
# recently used, so memory is bounded whatever the number of bindings (bench/README.md, issue #14).
CEL_PROGRAM_CACHE = 512
_MISS = object()


@dataclass
class _CelProgram:
    """A compiled condition shared by every binding with the same source text."""

    program: Any
    # The claim names the condition reads as claims.<name>; None when it uses `claims` another way.
    names: tuple[str, ...] | None
    results: dict[tuple[tuple[str, str | None], ...], RuleFailure | None] = field(default_factory=dict)


def _first_child(node: Any, data: str) -> Any:
    """The first child of a parse-tree node named data, else None."""
    if getattr(node, "data", None) == data and node.children:
        return node.children[0]
    return None


def _claim_names(ast: Any) -> tuple[str, ...] | None:
    """Names read as `claims.<name>`, or None when `claims` appears in any other form (index, size, macro)."""
    names: set[str] = set()
    dotted: set[int] = set()
    plain: list[Any] = []
    stack = [ast]
    while stack:
        node = stack.pop()
        if not hasattr(node, "data"):
            continue
        if node.data == "ident" and node.children and str(node.children[0]) == "claims":
            plain.append(node)
        if node.data == "member_dot" and len(node.children) == 2:
            ident = _first_child(_first_child(node.children[0], "member"), "primary")
            if getattr(ident, "data", None) == "ident" and str(_first_child(ident, "ident")) == "claims":
                names.add(str(node.children[1]))
                dotted.add(id(ident))
        stack.extend(node.children)
    if any(id(n) not in dotted for n in plain):
        return None
    return tuple(sorted(names))


@functools.lru_cache(maxsize=CEL_PROGRAM_CACHE)
def _compile_cel(source: str) -> _CelProgram:
    # Compiling costs ~0.2 ms; thousands of bindings often share a handful of conditions.
    ast = _CEL_ENV.compile(source)
    return _CelProgram(_CEL_ENV.program(ast), _claim_names(ast))


def _cel_key(names: tuple[str, ...], c: Mapping[str, Any]) -> tuple[tuple[str, str | None], ...] | None:
    try:
        # Canonical JSON keeps types apart ("1", 1, 1.0 and true differ), absent differs from null.
        return tuple((n, json.dumps(c[n], sort_keys=True) if n in c else None) for n in names)
    except (TypeError, ValueError):
        return None


def _cel_error(exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"CEL expression does not compile: {first}"


def _cel_check(source: str, errors: list[FieldError], *, lazy: bool = False) -> Check | None:
    """The condition's check; compiled now to validate it (unless lazy), then again on use only if evicted."""
    if not lazy:
        try:
            _compile_cel(source)  # validates; the program stays in the bounded cache, not in the binding
        except Exception as exc:  # celpy raises its own parser errors; all mean "does not compile"
            errors.append(FieldError("spec.rules.condition", _cel_error(exc)))
            return None

    def evaluate(compiled: _CelProgram, c: Mapping[str, Any]) -> RuleFailure | None:
        names = compiled.names
        # Only the claims the condition reads are converted (the conversion costs as much as evaluating).
        data = dict(c) if names is None else {n: c[n] for n in names if n in c}
        try:
            result = compiled.program.evaluate({"claims": json_to_cel(data)})
        except Exception as exc:  # evaluation errors (missing claim, bad types) deny
            return RuleFailure("rules.condition", "claims", source, f"evaluation error: {exc}")
        if isinstance(result, celpy.celtypes.BoolType):
            return None if bool(result) else RuleFailure("rules.condition", "claims", source, False)
        # celpy returns (not raises) some evaluation errors; anything but a boolean denies.
        return RuleFailure("rules.condition", "claims", source, f"not a boolean: {result!r}")

    def check(c: Mapping[str, Any]) -> RuleFailure | None:
        try:
            compiled = _compile_cel(source)
        except Exception as exc:  # only a lazily compiled condition gets here: it denies, fail closed
            return RuleFailure("rules.condition", "claims", source, _cel_error(exc))
        names, results = compiled.names, compiled.results
        # CEL has no clock or randomness: the answer is a function of the claims it reads, so it is
        # remembered per distinct value of those claims (the interpreter costs ~0.3 ms per run).
        key = _cel_key(names, c) if names is not None else None
        # One dict operation: another request thread may clear() the cache between two.
        cached = results.get(key, _MISS) if key is not None else _MISS
        if cached is not _MISS:
            return cached  # type: ignore[return-value]
        failure = evaluate(compiled, c)
        if key is not None:
            if len(results) >= CEL_RESULT_CACHE:
                results.clear()
            results[key] = failure
        return failure
    return check


def _check_metadata(namespace: str, name: str, errors: list[FieldError]) -> None:
    if not _DNS_LABEL.match(namespace):
        errors.append(FieldError("metadata.namespace", "must be a DNS label"))
    if not name or len(name) > MAX_NAME or not _DNS_SUBDOMAIN.match(name):
        errors.append(FieldError("metadata.name", f"must be a DNS subdomain name of at most {MAX_NAME} characters"))


def compile_binding(namespace: str, name: str, spec: Mapping[str, Any], *, lazy_cel: bool = False) -> CompiledBinding:
    """Validate and compile one binding spec; raise CompileError naming every bad field.

    lazy_cel: do not compile the CEL condition now (the service, for the operator's document, whose entries the
    operator validated): it is compiled on first use, and denies if it does not compile.
    """
    errors: list[FieldError] = []
    _check_metadata(namespace, name, errors)
    try:
        model = BindingSpec.model_validate(spec)
    except ValidationError as exc:
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            errors.append(FieldError(f"spec.{loc}" if loc else "spec", err["msg"]))
        raise CompileError(errors) from None

    sel = model.project
    chosen = [k for k in ("path", "id", "namespace") if getattr(sel, k) is not None]
    if len(chosen) != 1:
        errors.append(FieldError("spec.project", f"set exactly one of path, id, namespace (got {chosen or 'none'})"))
    aws = model.aws
    if not ROLE_ARN.match(aws.role_arn):
        errors.append(FieldError("spec.aws.roleArn", "must look like arn:aws:iam::123456789012:role/NAME"))
    if len(aws.session_tags) > MAX_TAGS:
        errors.append(FieldError("spec.aws.sessionTags", f"at most {MAX_TAGS} session tags"))
    seen: set[str] = set()
    for i, tag in enumerate(aws.session_tags):
        problem = key_problem(tag)
        if problem:
            errors.append(FieldError(f"spec.aws.sessionTags[{i}]", problem))
        if tag.lower() in seen:  # AWS tag keys are case-insensitive
            errors.append(FieldError(f"spec.aws.sessionTags[{i}]", f"duplicate tag {tag!r}"))
        seen.add(tag.lower())
    for i, tag in enumerate(aws.transitive_tags):
        if tag not in aws.session_tags:
            errors.append(FieldError(f"spec.aws.transitiveTags[{i}]", f"{tag!r} is not in sessionTags"))
    if aws.audience is not None and not aws.audience.strip():
        errors.append(FieldError("spec.aws.audience", "must not be empty"))
    if len(set(aws.transitive_tags)) != len(aws.transitive_tags):
        errors.append(FieldError("spec.aws.transitiveTags", "lists a tag twice"))
    if model.issuer is not None:
        try:
            check_issuer(model.issuer)
        except ValueError as exc:
            errors.append(FieldError("spec.issuer", str(exc)))

    checks: list[Check] = []
    if len(chosen) == 1:
        checks.append(_project_check(sel))
    r = model.rules
    optional: list[Check | None] = []
    if r.refs is not None:
        optional.append(_globs_check("rules.refs", "ref", r.refs, errors))
    if r.ref_type is not None:
        optional.append(_equals_check("rules.refType", "ref_type", r.ref_type))
    if r.protected_ref is not None:
        optional.append(_equals_check("rules.protectedRef", "ref_protected", "true" if r.protected_ref else "false"))
    if r.environments is not None:
        optional.append(_globs_check("rules.environments", "environment", r.environments, errors))
    if r.protected_environment is not None:
        optional.append(_equals_check("rules.protectedEnvironment", "environment_protected",
                                      "true" if r.protected_environment else "false"))
    if r.pipeline_sources is not None:
        optional.append(_member_check("rules.pipelineSources", "pipeline_source", r.pipeline_sources))
    if r.runner_ids is not None:
        optional.append(_member_check("rules.runnerIds", "runner_id", r.runner_ids))
    if r.runner_environment is not None:
        optional.append(_equals_check("rules.runnerEnvironment", "runner_environment", r.runner_environment))
    if r.min_access_level is not None:
        optional.append(_access_check(r.min_access_level))
    if r.condition is not None:
        optional.append(_cel_check(r.condition, errors, lazy=lazy_cel))
    checks.extend(c for c in optional if c is not None)
    if errors:
        raise CompileError(errors)
    return CompiledBinding(namespace=namespace, name=name, spec=model, checks=tuple(checks))


def compile_manifest(doc: Mapping[str, Any]) -> CompiledBinding:
    """Compile a whole GitLabAWSBinding manifest (apiVersion, kind, metadata, spec)."""
    errors: list[FieldError] = []
    if doc.get("apiVersion") != API_VERSION:
        errors.append(FieldError("apiVersion", f"must be {API_VERSION}"))
    if doc.get("kind") != KIND:
        errors.append(FieldError("kind", f"must be {KIND}"))
    meta = doc.get("metadata") or {}
    if not isinstance(meta, Mapping):
        errors.append(FieldError("metadata", "must be a mapping"))
        meta = {}
    spec = doc.get("spec")
    if not isinstance(spec, Mapping):
        errors.append(FieldError("spec", "must be a mapping"))
    if errors:
        raise CompileError(errors)
    assert isinstance(spec, Mapping)
    return compile_binding(str(meta.get("namespace") or "default"), str(meta.get("name") or ""), spec)


@dataclass(frozen=True)
class Candidate:
    """A binding of the caller's project and how it fared."""

    binding: CompiledBinding
    failure: RuleFailure | None
    # Set once the request's filters and the grant's own checks passed (see core.exchange).
    grant: Grant | None = None


class BindingIndex:
    """Bindings indexed by issuer and project so a lookup never scans them all."""

    def __init__(self, bindings: Iterable[CompiledBinding], *, default_issuer: str | None) -> None:
        self._by_key: dict[tuple[str, ProjectKey], list[CompiledBinding]] = {}
        self.bindings: tuple[CompiledBinding, ...] = tuple(sorted(bindings, key=lambda b: b.key))
        self.unresolved: list[CompiledBinding] = []
        for b in self.bindings:
            issuer = b.spec.issuer or default_issuer
            if issuer is None:
                self.unresolved.append(b)
                continue
            self._by_key.setdefault((issuer, selector_key(b.spec.project)), []).append(b)

    def __len__(self) -> int:
        return len(self.bindings)

    def for_token(self, issuer: str, claims: Mapping[str, Any]) -> list[CompiledBinding]:
        """The bindings whose project selector names this token's project, in name order."""
        found: list[CompiledBinding] = []
        for key in project_keys(claims):
            found.extend(self._by_key.get((issuer, key), ()))
        found.sort(key=lambda b: b.key)
        return found

    def evaluate(self, issuer: str, claims: Mapping[str, Any]) -> list[Candidate]:
        """Evaluate every binding of the token's project."""
        return [Candidate(b, b.evaluate(claims)) for b in self.for_token(issuer, claims)]
