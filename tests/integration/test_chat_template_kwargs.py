"""``rollout.chat_template_kwargs`` reaches every chat-template call: the rollout engine's prompts (rollout, frozen
rollout and judge pools are the same worker), the reward actor's tokenizer, a reward model's own template, the
self-teacher's re-prompts and the pre-flight's length checks. The kit's r1 model gets a chat template that renders
``</think>`` only when ``enable_thinking`` is false (Qwen3's switch), so each call shows whether it got the keyword."""

import json
import shutil

import pytest
import torch

from relay_rl.batch import with_chat_template_kwargs
from relay_rl.errors import ConfigError

TEMPLATE = (
    "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    "{% if enable_thinking is defined and enable_thinking is false %}</think>{% endif %}"
    "{% if add_generation_prompt %}={% endif %}"
)
NO_THINKING = {"enable_thinking": False}
MESSAGES = [{"role": "user", "content": "12+34"}]


@pytest.fixture(scope="module")
def chat_model(kit_r1, tmp_path_factory):
    """The kit's r1 warm start with the test's chat template (its vocabulary has ``</think>``)."""
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("chat") / "model"
    shutil.copytree(kit_r1["warm_start"], path)
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = TEMPLATE
    tok.save_pretrained(path)
    think = tok.convert_tokens_to_ids("</think>")
    assert think != tok.unk_token_id
    return str(path), tok, think


def test_the_binding_gives_every_call_the_keywords_and_a_call_s_own_win(chat_model):
    from transformers import AutoTokenizer

    path, _, _ = chat_model
    tok = with_chat_template_kwargs(AutoTokenizer.from_pretrained(path), NO_THINKING)
    assert tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True) == "12+34</think>="
    assert tok.apply_chat_template(MESSAGES, tokenize=False, enable_thinking=True) == "12+34"
    plain = with_chat_template_kwargs(AutoTokenizer.from_pretrained(path), {})
    assert plain.apply_chat_template(MESSAGES, tokenize=False) == "12+34"


def test_the_rollout_worker_renders_prompts_with_them(chat_model):
    from relay_rl.rollout_workers.actor import RolloutWorker
    from relay_rl.sampling import SamplingParams

    path, _, think = chat_model
    params = SamplingParams(n=1, temperature=0.0, max_tokens=3)
    for kwargs, has_think in ((NO_THINKING, True), (None, False)):
        worker = RolloutWorker(path, "hf", "float32", {}, chat_template_kwargs=kwargs)
        batch = worker.generate([{"prompt": MESSAGES}], params)
        ids = batch.prompt_ids[0][batch.prompt_mask[0].bool()].tolist()
        assert (think in ids) is has_think, (kwargs, ids)


def test_the_reward_actor_and_a_reward_model_render_with_them(chat_model, tmp_path):
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from relay_rl.reward_workers.actor import RewardWorker
    from relay_rl.reward_workers.reward_model import make_reward_model

    path, tok, _ = chat_model
    worker = RewardWorker(["arithmetic_exact"], path, chat_template_kwargs=NO_THINKING)
    assert worker.tokenizer.apply_chat_template(MESSAGES, tokenize=False) == "12+34</think>"

    # a (randomly initialised) sequence classifier with the same tokenizer: its scores are those of the text its
    # template renders with the keywords
    config = AutoConfig.from_pretrained(path, num_labels=1)
    config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    rm = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()

    def direct(text):
        with torch.no_grad():
            return float(rm(**AutoTokenizer.from_pretrained(tmp_path / "rm")(text, return_tensors="pt")).logits[0, 0])

    with_kw = make_reward_model(None, model=str(tmp_path / "rm"), chat_template_kwargs=NO_THINKING)
    without = make_reward_model(None, model=str(tmp_path / "rm"))
    (a,) = with_kw(prompts=[MESSAGES], completions=["46"])
    (b,) = without(prompts=[MESSAGES], completions=["46"])
    assert a == pytest.approx(direct("12+3446</think>"), abs=1e-5)
    assert b == pytest.approx(direct("12+3446"), abs=1e-5) and a != b


def test_the_pools_pass_them_to_reward_models():
    from relay_rl.cluster.config import load_config
    from relay_rl.cluster.pools import with_template_kwargs
    from tests.conftest import RECIPES

    cfg = load_config(RECIPES / "quickstart.yaml", ["rollout.chat_template_kwargs={enable_thinking: false}"])
    funcs = [
        "arithmetic_exact",
        {"name": "reward_model", "kwargs": {"model": "x"}},
        {"name": "reward_model", "kwargs": {"model": "y", "chat_template_kwargs": {}}},  # its own wins
    ]
    assert with_template_kwargs(funcs, cfg) == [
        "arithmetic_exact",
        {"name": "reward_model", "kwargs": {"chat_template_kwargs": NO_THINKING, "model": "x"}},
        {"name": "reward_model", "kwargs": {"chat_template_kwargs": {}, "model": "y"}},
    ]


def test_the_self_teacher_re_prompts_with_them(chat_model, kit_r1):
    from relay_rl.cluster.config import load_config
    from relay_rl.rollout_workers.actor import RolloutWorker
    from relay_rl.sampling import SamplingParams
    from relay_rl.teacher_workers.actor import TeacherWorker
    from tests.conftest import RECIPES

    path, tok, think = chat_model
    batch = RolloutWorker(path, "hf", "float32", {}).generate(
        [{"prompt": MESSAGES, "privileged_context": "46"}], SamplingParams(n=1, temperature=0.0, max_tokens=3)
    )
    o = RECIPES.parent / "overlays"
    for kwargs, has_think in (("{enable_thinking: false}", True), ("{}", False)):
        cfg = load_config(
            RECIPES / "sdft.yaml",
            [str(o / "kit.yaml"), str(o / "kit_sdft.yaml"), f"rollout.chat_template_kwargs={kwargs}"],
        )
        teacher = TeacherWorker(path, run_config=cfg.model_dump(mode="json"), pool="self_teacher")
        view, extra = teacher._reprompted(batch)
        ids = view.prompt_ids[0][view.prompt_mask[0].bool()].tolist()
        assert (think in ids) is has_think and extra["teacher_context"].tolist() == [True]


def test_the_preflight_measures_prompts_with_them(chat_model, kit_r1, tmp_path):
    """ "12+34=" is 6 tokens, "12+34</think>=" 7: with max_prompt_length 6 and overlong_prompts error, only the run with
    the keyword is refused (the pre-flight renders prompts as the rollout will)."""
    from relay_rl.cluster.config import load_config
    from relay_rl.cluster.preflight import preflight
    from tests.conftest import RECIPES

    path, _, _ = chat_model
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"prompt": MESSAGES, "answer": "46"}) + "\n")
    args = [
        f"model.name_or_path={path}",
        f"data.train={data}",
        "data.eval=null",
        "rollout.max_prompt_length=6",
        "rollout.overlong_prompts=error",
        "kit=null",
    ]
    preflight(load_config(RECIPES / "quickstart.yaml", args))
    with pytest.raises(ConfigError, match="max_prompt_length"):
        preflight(
            load_config(RECIPES / "quickstart.yaml", [*args, "rollout.chat_template_kwargs={enable_thinking: false}"])
        )
