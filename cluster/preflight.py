"""Pre-flight: everything that can be checked before any actor starts, run by both ``relay-rl validate`` and
``relay-rl train``. A problem is a ``ConfigError`` naming the field (or file and row), what is wrong and what to do;
a ``validate`` that passes means ``train`` will start.

Checked: the models (the path exists, config and tokenizer load, the embedding covers the tokenizer, a pad token or
the EOS fallback, a chat template for conversational data, prompt + completion budget within the model's positions),
the teacher (loads, same vocabulary where the family needs one, top-k within it), the data (loads, not empty, the
prompt column holds strings or chat messages, overlong prompts per ``rollout.overlong_prompts``, the completion
column of the families that train on dataset completions), and every reward function (imports, is callable, accepts
the keywords TRL passes, finds the dataset columns it names).
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from relay_rl.batch import prompt_token_ids, with_chat_template_kwargs
from relay_rl.errors import ConfigError

from .config import RunConfig
from .data import load_data, load_split
from .kit.paths import kit_dir, parts_for, resolve_kit_path, resolve_reward_funcs

# the keywords every reward function receives besides the dataset columns (TRL's signature)
REWARD_KEYWORDS = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric")
SAMPLE_ROWS = 20_000  # prompts tokenised to check their lengths (all of them up to this many)


@dataclass
class Checked:
    """What the pre-flight resolved and loaded, for ``train`` to use (nothing is loaded twice)."""

    model_path: str | None
    teacher_path: str | None
    train_data: object = None
    eval_data: object = None
    notes: list[str] = field(default_factory=list)


def preflight(cfg: RunConfig, kit_built: bool | None = None, offline: bool | None = False) -> Checked:
    """Run every check; raise ``ConfigError`` at the first problem. ``kit_built=False`` (validate before the kit
    exists) skips what needs the kit's files, with a note. ``offline``: True, hub model and dataset ids that are not
    in the local cache are not checked (a note each); None, the same when the hub cannot be reached from here (a
    login node: ``validate``); False, every id is loaded (``train``). Local paths are always checked."""
    needs = cfg.needs
    teacher_name = cfg.teacher.name_or_path if cfg.teacher is not None and needs.teacher_model else None
    model_path = resolve_kit_path(cfg.model.name_or_path, cfg.kit)
    teacher_path = resolve_kit_path(teacher_name, cfg.kit) if teacher_name else None
    out = Checked(model_path, teacher_path)
    check_trackers(cfg)
    if kit_built is None:
        kit_built = cfg.kit is None or (kit_dir(cfg.kit) / "kit.json").is_file()
    missing_parts = [p for p in parts_for([cfg]) if cfg.kit is not None and not (kit_dir(cfg.kit) / p).is_dir()]
    if not kit_built or missing_parts:
        out.notes.append(
            "the quickstart kit is not built yet: its models and data are checked when `relay-rl "
            "train` (or `relay-rl kit`) builds it"
        )
        _check_rewards_importable(cfg)
        check_tools_importable(cfg)
        return out
    unchecked, why = hub_ids_not_checked(cfg, model_path, teacher_path, offline)
    if unchecked:
        out.notes += check_local_parts(cfg, model_path, teacher_path, unchecked, why)
        _check_rewards_importable(cfg)
        check_tools_importable(cfg)
        return out

    tok, mcfg = load_model_files("model.name_or_path", model_path, cfg.model.trust_remote_code)
    tok = with_chat_template_kwargs(tok, cfg.rollout.chat_template_kwargs)  # as the rollout renders prompts
    out.notes += check_tokenizer(cfg, tok, mcfg, model_path)
    if teacher_path:
        check_teacher(cfg, model_path, teacher_path, (tok, mcfg))

    out.train_data, out.eval_data = load_data(cfg.data, cfg.kit)
    for fld, ds in (("data.train", out.train_data), ("data.eval", out.eval_data)):
        if ds is None:
            continue
        conversational = check_prompts(cfg, fld, ds, tok)
        if (cfg.rollout.tools or cfg.rollout.environment_factory) and not conversational:
            raise ConfigError(
                f"{fld}: rollout.tools / rollout.environment_factory need chat-message prompts (the tool calls "
                "and results are chat turns), and the prompts are strings: give data.prompt_column as a list of "
                '{"role": "user", "content": ...} messages'
            )
        if conversational and not getattr(tok, "chat_template", None):
            raise ConfigError(
                f"{fld}: the prompts are chat messages but the tokenizer of {model_path} has no chat "
                "template: use an instruct/chat model's tokenizer, add a chat_template to its "
                "tokenizer_config.json, or give plain-text prompts"
            )
        ds, note = check_lengths(cfg, fld, ds, tok, mcfg)
        if note:
            out.notes.append(note)
        if fld == "data.train":
            out.train_data = ds
        else:
            out.eval_data = ds
    check_multi_turn(cfg, tok)
    fix = cfg.family.completion_column_fix(cfg.algorithm)
    if fix is not None:
        check_completions(cfg, out.train_data, fix)
    check_family_columns(cfg, out.train_data)
    if cfg.reward is not None:
        check_rewards(
            cfg,
            tok,
            {
                fld: ds.column_names
                for fld, ds in (("data.train", out.train_data), ("data.eval", out.eval_data))
                if ds is not None
            },
        )
    return out


def is_hub_id(name: str) -> bool:
    """``org/name`` or ``name`` that is no path on this machine (a path starts with ``/``, ``.`` or ``~``)."""
    return (
        not name.startswith(("/", ".", "~"))
        and not Path(name).exists()
        and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) is not None
    )


def in_local_cache(repo_id: str) -> bool:
    """A hub model whose files are in the local Hugging Face cache (transformers loads them without the hub)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001  (an id the cache cannot even look up: not cached)
        return False


def hub_unreachable_reason() -> str | None:
    """Why the Hugging Face hub cannot be reached from this machine, or None when it can (one TCP connection to its
    endpoint, 3 s at most)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=3).close()
        return None
    except OSError as e:
        return f"{constants.ENDPOINT} is not reachable from this machine: {e}"


def hub_ids_not_checked(
    cfg: RunConfig, model_path: str, teacher_path: str | None, offline: bool | None
) -> tuple[dict, str | None]:
    """({field: hub id} of the models and datasets the pre-flight cannot load here, why) (``preflight``'s
    ``offline``)."""
    if offline is False:
        return {}, None
    named = {
        "model.name_or_path": model_path,
        "teacher.name_or_path": teacher_path,
        "data.train": resolve_kit_path(cfg.data.train, cfg.kit),
        "data.eval": resolve_kit_path(cfg.data.eval, cfg.kit) if cfg.data.eval else None,
    }
    hub = {fld: name for fld, name in named.items() if name and is_hub_id(name)}
    hub = {fld: name for fld, name in hub.items() if fld.startswith("data.") or not in_local_cache(name)}
    if not hub:
        return {}, None
    why = "--offline" if offline else hub_unreachable_reason()
    return ({}, None) if why is None else (hub, why)


def check_local_parts(cfg: RunConfig, model_path: str, teacher_path: str | None, unchecked: dict, why: str) -> list:
    """Without the hub: a note for each hub id in ``unchecked``; the local models and data are checked as always."""
    notes = [
        f"{fld}: {name} is a hub id, not checked here ({why}); `relay-rl train` loads it where the hub (or its local "
        "cache) is reachable"
        for fld, name in unchecked.items()
    ]
    teacher_local = teacher_path and "teacher.name_or_path" not in unchecked
    if "model.name_or_path" not in unchecked:
        tok, mcfg = load_model_files("model.name_or_path", model_path, cfg.model.trust_remote_code)
        notes += check_tokenizer(cfg, tok, mcfg, model_path)
        if teacher_local:
            check_teacher(cfg, model_path, teacher_path, (tok, mcfg))
    elif teacher_local:
        load_model_files("teacher.name_or_path", teacher_path, cfg.teacher.trust_remote_code)
    d = cfg.data
    for fld, spec, split, limit in (
        ("data.train", d.train, d.train_split, None),
        ("data.eval", d.eval, d.eval_split, d.eval_limit),
    ):
        if spec and fld not in unchecked:
            load_split(fld, spec, split, cfg.kit, d.prompt_column, limit, name=d.name, revision=d.revision)
    return notes


def check_trackers(cfg: RunConfig) -> None:
    """Every tracker ``train.report_to`` names is installed (``all`` takes the installed ones)."""
    from .trackers import installed, resolve_report_to

    for name in resolve_report_to(cfg.train.report_to):
        if not installed(name):
            raise ConfigError(
                f"train.report_to names {name}, which is not installed here: pip install 'relay-rl[{name}]' "
                f"(or remove it from train.report_to)"
            )


# ----------------------------------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------------------------------
def load_model_files(field: str, path: str, trust_remote_code: bool = False):
    """(tokenizer, model config) of ``path``; a ConfigError naming the field if either cannot load."""
    from transformers import AutoConfig, AutoTokenizer

    p = Path(path)
    if p.is_absolute() and not p.exists():
        raise ConfigError(
            f"{field}: no such folder {path}: give a local model folder (relative paths resolve from the "
            "run file's folder) or a model id the cluster can download"
        )
    if p.is_dir() and not (p / "config.json").is_file():
        raise ConfigError(
            f"{field}: {path} has no config.json: give a folder saved with save_pretrained (the "
            "model's config, weights and tokenizer)"
        )
    try:
        mcfg = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001  (any loading failure is the user's path)
        raise ConfigError(
            f"{field}: cannot load the model config of {path!r} ({_first_line(e)}): give a local model "
            "folder or a model id the cluster can download"
            + (" (HF_HUB_OFFLINE is set: no downloads)" if os.environ.get("HF_HUB_OFFLINE") else "")
        ) from None
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(
            f"{field}: the model config of {path} loads but its tokenizer does not ({_first_line(e)}): "
            "save the tokenizer into the model folder (tokenizer.save_pretrained)"
        ) from None
    return tok, mcfg


def _text_config(mcfg):
    return mcfg.get_text_config() if hasattr(mcfg, "get_text_config") else mcfg


def check_tokenizer(cfg: RunConfig, tok, mcfg, path: str) -> list[str]:
    notes = []
    vocab = getattr(_text_config(mcfg), "vocab_size", None)
    if vocab is not None and len(tok) > vocab:
        raise ConfigError(
            f"model.name_or_path: the tokenizer of {path} has {len(tok)} tokens but the model's "
            f"embedding has vocab_size {vocab}: ids >= {vocab} would index past it. Use the tokenizer "
            "saved with this model (or resize the model's embeddings and save it)"
        )
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise ConfigError(
                f"model.name_or_path: the tokenizer of {path} has neither a pad nor an EOS token: "
                "completions could never end. Set eos_token (and pad_token) in its tokenizer_config.json"
            )
        notes.append(f"the tokenizer has no pad token: EOS ({tok.eos_token!r}) pads (padding is masked out)")
    positions = getattr(_text_config(mcfg), "max_position_embeddings", None)
    r = cfg.rollout
    if positions and r.max_completion_length >= positions:
        raise ConfigError(
            f"rollout.max_completion_length: {r.max_completion_length} tokens leave no room for a "
            f"prompt in the model's {positions} positions (max_position_embeddings of {path}): "
            f"lower it below {positions}"
        )
    return notes


def check_teacher(cfg: RunConfig, student_path: str, teacher_path: str | None, student=None) -> None:
    needs = cfg.needs
    if not needs.teachers or not any(s.pool == "teacher" for s in needs.teachers):
        return
    s_tok, s_cfg = student or load_model_files("model.name_or_path", student_path, cfg.model.trust_remote_code)
    t_tok, t_cfg = load_model_files("teacher.name_or_path", teacher_path, cfg.teacher.trust_remote_code)
    t_vocab = getattr(t_cfg, "vocab_size", None) or len(t_tok)
    if needs.same_vocabulary and (
        s_tok.get_vocab() != t_tok.get_vocab()
        or getattr(s_cfg, "vocab_size", None) != getattr(t_cfg, "vocab_size", None)
    ):
        raise ConfigError(
            f"teacher.name_or_path: the teacher's vocabulary differs from the student's (teacher {teacher_path}: "
            f"{len(t_tok)} tokens, model vocab_size {getattr(t_cfg, 'vocab_size', '?')}; student {student_path}: "
            f"{len(s_tok)} tokens, vocab_size {getattr(s_cfg, 'vocab_size', '?')}). Token-level distillation needs "
            "one vocabulary: pick a teacher of the student's family, or use algorithm.name: gold with "
            "use_uld_loss: true (cross-tokenizer)"
        )
    for spec in needs.teachers:
        if spec.output == "topk" and spec.top_k > t_vocab:
            raise ConfigError(
                f"algorithm.loss_top_k: {spec.top_k} is larger than the teacher's vocabulary "
                f"({t_vocab} tokens, {teacher_path}): use at most {t_vocab}, or 0 for the full "
                "vocabulary"
            )


# ----------------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------------
def check_prompts(cfg: RunConfig, fld: str, ds, tok) -> bool:
    """Every prompt (of the first SAMPLE_ROWS) is a non-empty string or a list of chat messages; returns whether
    the data is conversational."""
    col = cfg.data.prompt_column
    if len(ds) == 0:
        raise ConfigError(f"{fld}: the dataset has no rows")
    kinds = set()
    for i, p in enumerate(ds.select(range(min(len(ds), SAMPLE_ROWS)))[col]):
        if isinstance(p, str):
            if not p.strip():
                raise ConfigError(f"{fld}: row {i}: the prompt ({col!r}) is empty")
            kinds.add("text")
        elif (
            isinstance(p, list)
            and p
            and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in p
            )
        ):
            kinds.add("chat")
        else:
            what = "null" if p is None else f"{type(p).__name__} {str(p)[:60]!r}"
            raise ConfigError(
                f"{fld}: row {i}: the prompt ({col!r}) is {what}; a prompt is a string, or a list of "
                "chat messages {role: ..., content: ...}. Fix the row or set data.prompt_column"
            )
    if kinds == {"text", "chat"}:
        raise ConfigError(f"{fld}: the prompt column {col!r} mixes strings and chat messages: use one form")
    return kinds == {"chat"}


def prompt_length(tok, prompt) -> int:
    return len(prompt_token_ids(tok, prompt))


def check_lengths(cfg: RunConfig, fld: str, ds, tok, mcfg):
    """Prompts longer than ``max_prompt_length``: truncated (counted), dropped (the dataset without them) or an
    error, per ``rollout.overlong_prompts``. A prompt that, so cut, still cannot fit the model's positions with
    ``max_completion_length`` is an error."""
    r, col = cfg.rollout, cfg.data.prompt_column
    positions = getattr(_text_config(mcfg), "max_position_embeddings", None)
    n = min(len(ds), SAMPLE_ROWS)
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "longer than the maximum sequence length": what this check reports itself
    try:
        lengths = [prompt_length(tok, p) for p in ds.select(range(n))[col]]
    finally:
        hf_logging.set_verbosity(verbosity)
    budget = r.max_prompt_length
    over = [i for i, L in enumerate(lengths) if budget and L > budget]
    share = f"{len(over)} of {n} prompts" + ("" if n == len(ds) else " checked")
    if over and r.overlong_prompts == "error":
        raise ConfigError(
            f"{fld}: row {over[0]}: its prompt has {lengths[over[0]]} tokens, more than "
            f"rollout.max_prompt_length ({budget}); {share} are too long. Raise max_prompt_length, or "
            "set rollout.overlong_prompts: truncate (keep their last tokens) or drop"
        )
    kept = [i for i in range(n) if not (over and r.overlong_prompts == "drop" and budget and lengths[i] > budget)]
    if positions:
        fit = positions - r.max_completion_length
        misfit = [i for i in kept if min(lengths[i], budget or lengths[i]) > fit]
        if misfit:
            i = misfit[0]
            raise ConfigError(
                f"{fld}: row {i}: its prompt has {lengths[i]} tokens"
                + (f" (cut to max_prompt_length {budget})" if budget and lengths[i] > budget else "")
                + f" and cannot fit the model's {positions} positions with max_completion_length "
                f"{r.max_completion_length} ({len(misfit)} of {n} prompts checked): set "
                f"rollout.max_prompt_length <= {fit}, or shorten max_completion_length"
            )
    if not over:
        return ds, None
    if r.overlong_prompts == "drop":
        keep = kept + list(range(n, len(ds)))
        if not keep:
            raise ConfigError(
                f"{fld}: every prompt is longer than rollout.max_prompt_length ({budget}) and "
                "overlong_prompts is drop: nothing would be left. Raise max_prompt_length"
            )
        return ds.select(keep), f"{fld}: dropped {share} longer than max_prompt_length ({budget} tokens)"
    return ds, (
        f"{fld}: {share} are longer than max_prompt_length ({budget} tokens) and are truncated to their "
        "last tokens (rollout.overlong_prompts; counted in prompts/truncated)"
    )


def check_completions(cfg: RunConfig, ds, fix: str) -> None:
    """The completion column the family trains on exists and holds strings (or assistant turns); ``fix``: what to do
    when it is missing (the family's ``completion_column_fix``)."""
    col = cfg.data.completion_column
    if col not in ds.column_names:
        raise ConfigError(
            f"data.completion_column: the training data has no column {col!r} (columns: "
            f"{', '.join(ds.column_names)}); algorithm {cfg.algorithm.name} trains on dataset "
            f"completions: {fix}"
        )
    chat = isinstance(ds[0][cfg.data.prompt_column], list)
    for i, c in enumerate(ds.select(range(min(len(ds), SAMPLE_ROWS)))[col]):
        if not (
            isinstance(c, str)
            or (
                chat
                and isinstance(c, list)
                and c
                and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in c)
            )
        ):
            raise ConfigError(
                f"data.train: row {i}: the completion ({col!r}) is "
                f"{'null' if c is None else type(c).__name__}; it must be a string"
                + (", or a list of chat messages (the assistant's turn)" if chat else "")
            )


def check_family_columns(cfg: RunConfig, ds) -> None:
    """The dataset columns the method itself reads (SDFT's teacher prompt, SDPO's environment feedback)."""
    columns = cfg.family.data_columns(cfg)
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        knob = columns[missing[0]]
        raise ConfigError(
            f"data.train: algorithm {cfg.algorithm.name} reads the column(s) {', '.join(missing)} "
            f"({knob}), which the training data lacks (columns: {', '.join(ds.column_names)}): "
            f"add the column (the privileged context the teacher sees), or change {knob}"
        )


# ----------------------------------------------------------------------------------------------------------------
# reward functions
# ----------------------------------------------------------------------------------------------------------------
def reward_search_path(cfg: RunConfig) -> list[str]:
    """Where ``module:function`` reward imports are found besides installed packages: the run file's folder and the
    current directory (added to the driver's sys.path, which Ray's workers inherit)."""
    return list(dict.fromkeys(p for p in (cfg.run_dir, os.getcwd()) if p))


def _add_search_path(cfg: RunConfig) -> None:
    for p in reversed(reward_search_path(cfg)):
        if p not in sys.path:
            sys.path.insert(0, p)


def check_tools_importable(cfg: RunConfig) -> list:
    """``rollout.tools`` import and have schemas; ``rollout.environment_factory`` imports, constructs and offers tools.
    Returns the tool functions (and the environment's bound methods)."""
    from relay_rl.rollout_workers import tools as T

    r = cfg.rollout
    if not (r.tools or r.environment_factory or r.agent_program):
        return []
    _add_search_path(cfg)
    try:
        if r.agent_program:
            T.load_agent_program(r.agent_program)
        tools = T.load_tools(r.tools)
        if r.environment_factory:
            env = T.check_environment(T.load_environment(r.environment_factory), r.environment_factory)
            tools += [getattr(env, n) for n in T.environment_methods(type(env))]
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return tools


def check_multi_turn(cfg: RunConfig, tok) -> None:
    """Tools and environments load; the chat template renders a tool exchange prefix-preservingly, with the tools'
    schemas; a response template parses the model's calls."""
    from relay_rl.rollout_workers.tools import check_chat_template, set_response_template

    tools = check_tools_importable(cfg)
    if not tools:
        return
    try:
        set_response_template(tok, cfg.rollout.response_template)
        check_chat_template(tok)
        tok.apply_chat_template([{"role": "user", "content": "x"}], tools=tools, tokenize=False)
    except (ValueError, OSError) as e:
        fld = "rollout.response_template" if cfg.rollout.response_template else "model.name_or_path"
        raise ConfigError(f"{fld}: multi-turn rollouts (rollout.tools): {e}") from None
    except Exception as e:  # noqa: BLE001  (a template that fails to render with tools)
        raise ConfigError(
            f"model.name_or_path: the chat template fails to render the prompt with the tools' schemas "
            f"({_first_line(e)})"
        ) from None


def _check_rewards_importable(cfg: RunConfig) -> None:
    """Without a tokenizer (kit not built): import paths only."""
    if cfg.reward is None:
        return
    import importlib

    from relay_rl.reward_workers.registry import BUILTINS

    _add_search_path(cfg)
    for i, spec in enumerate(cfg.reward.reward_funcs):
        name = spec if isinstance(spec, str) else spec.name
        if name in BUILTINS:
            continue
        _import_reward(f"reward.reward_funcs[{i}]", name, importlib)


def _import_reward(fld: str, name: str, importlib):
    from relay_rl.reward_workers.registry import BUILTINS

    if ":" not in name:
        close = difflib.get_close_matches(name, BUILTINS, n=1)
        raise ConfigError(
            f"{fld}: unknown reward function {name!r}"
            + (f" (did you mean {close[0]!r}?)" if close else "")
            + f": use a built-in ({', '.join(sorted(BUILTINS))}) or an import path 'package.module:function'"
        )
    module, attr = name.split(":", 1)
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001  (ImportError, or the module itself failing on import)
        raise ConfigError(
            f"{fld}: reward function {name!r}: module {module!r} cannot be imported ({_first_line(e)}). "
            f"It is looked up in the run file's folder, the current directory and the installed "
            "packages"
        ) from None
    if not hasattr(mod, attr):
        public = [a for a in dir(mod) if not a.startswith("_") and callable(getattr(mod, a))]
        close = difflib.get_close_matches(attr, public, n=1)
        raise ConfigError(
            f"{fld}: module {module} ({getattr(mod, '__file__', '?')}) has no {attr!r}"
            + (
                f": did you mean {module}:{close[0]}?"
                if close
                else f" (it has: {', '.join(public[:12]) or 'no functions'})"
            )
        )
    return getattr(mod, attr)


def check_rewards(cfg: RunConfig, tokenizer, columns: dict[str, list[str]]) -> None:
    """Build every reward function as the reward actor will, and check it can be called with TRL's keywords."""
    import importlib

    from relay_rl.reward_workers.judge import judge_pool_model
    from relay_rl.reward_workers.registry import BUILTINS, resolve

    _add_search_path(cfg)
    specs = resolve_reward_funcs(cfg.reward.reward_funcs, cfg.kit)
    try:
        judge_pool_model(specs)
    except ValueError as e:
        raise ConfigError(f"reward.reward_funcs: {e}") from None
    for i, spec in enumerate(specs):
        fld = f"reward.reward_funcs[{i}]"
        name, kwargs = (spec, {}) if isinstance(spec, str) else (spec["name"], spec["kwargs"])
        if name not in BUILTINS:
            obj = _import_reward(fld, name, importlib)
            if not callable(obj):
                raise ConfigError(
                    f"{fld}: {name} is a {type(obj).__name__}, not a function: name a function with "
                    "TRL's reward signature f(prompts, completions, **kwargs) -> list[float]"
                )
        try:
            _, fn = resolve(spec, tokenizer)
        except TypeError as e:
            raise ConfigError(
                f"{fld}: {name} cannot be built with kwargs {kwargs} ({e}): give the arguments its factory takes"
            ) from None
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"{fld}: {name} failed while being built ({_first_line(e)})") from None
        if not callable(fn):
            raise ConfigError(
                f"{fld}: {name} with kwargs {kwargs} returned a {type(fn).__name__}, not a reward "
                "function (a factory must return the function)"
            )
        for data_field, cols in columns.items():
            check_signature(fld, name, fn, cols, data_field)


def check_signature(fld: str, name: str, fn, columns: list[str], data_field: str = "data.train") -> None:
    """The keywords TRL passes (and the dataset columns) must be accepted; the columns it needs must exist."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # a builtin or C function: nothing to check
    params = sig.parameters.values()
    offered = set(REWARD_KEYWORDS) | {"group_ids"} | set(columns)  # group_ids: to a function that names it
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.VAR_POSITIONAL)]
    if positional:
        raise ConfigError(
            f"{fld}: {name} takes positional-only arguments ({', '.join(positional)}); reward "
            "functions are called with keywords only: f(prompts, completions, **kwargs)"
        )
    if not any(p.kind == p.VAR_KEYWORD for p in params):
        names = {p.name for p in params}
        refused = [k for k in REWARD_KEYWORDS if k not in names]
        if refused:
            raise ConfigError(
                f"{fld}: {name}{sig} does not accept the keyword(s) {', '.join(refused)} that every "
                "reward function receives (TRL's signature): add **kwargs to its parameters"
            )
    required = [p.name for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    needed = [c for c in required if c not in offered] + [c for c in getattr(fn, "columns", ()) if c not in columns]
    if needed:
        raise ConfigError(
            f"{fld}: {name} needs the dataset column(s) {', '.join(dict.fromkeys(needed))}, which "
            f"{data_field} lacks (columns: {', '.join(columns)}): add the column, or pick the reward "
            "that matches the data"
        )


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__
