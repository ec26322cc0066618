"""The torch backend's two ways to a loss, and torch.compile, trace the same training curve.

- `--head-loss fused` (the default: tinyfbi/torch_backend/fused_loss.py, the heads and the loss over
  chunks of tokens) against `--head-loss unfused` (whole logits, then learner.distill_loss), for each
  loss kind, over 5 optimizer steps of the same run. Float32 on a CPU: the two paths compute the
  same products and sum the loss in a different order, so step 1 agrees to float32 rounding and the
  rest stay within 1e-5 relative (measured: equal to 6 decimals).
- `--compile` against eager over 5 steps: inductor may fuse and reorder float32 operations, so the
  same bound, 1e-5 relative.
The function itself is tested against distill_loss in tests/test_fused_loss.py.
"""
import pytest
from conftest import metrics

from tinyfbi import Model, ModelConfig, save_model
from tinyfbi.corpus.tokenizers import ByteTokenizer
from tinyfbi.train import train
from tinyfbi.training.spec import RunSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")
STEPS = 5
REL = 1e-5


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A byte-level full-precision teacher with random weights (the curves are under test, not quality)."""
    path = tmp_path_factory.mktemp("teacher") / "t"
    config = ModelConfig(vocab_size=256, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64, binarized=False)
    save_model(Model(config, seed=5), path, tokenizer=ByteTokenizer())
    return path


def losses(corpus, out, name, **fields):
    spec = RunSpec.build(backend="torch", size="micro", data=str(corpus), data_dir=str(out / "data"), out=str(out),
                         name=name, tokenizer="byte", steps=STEPS, batch_size=4, seq_len=32, eval_every=STEPS,
                         eval_batches=1, sample_tokens=0, save_every=STEPS, **fields)
    train(spec)
    return [row["loss"] for row in metrics(out / name / "metrics.jsonl")]


def assert_same_curve(a, b):
    assert len(a) == len(b) == STEPS
    for step, (x, y) in enumerate(zip(a, b), 1):
        assert abs(x - y) <= REL * abs(y), (step, x, y)


@pytest.mark.parametrize("loss", ["ad", "mix", "ce"])
def test_fused_head_loss_trains_like_whole_logits(corpus, teacher, tmp_path, loss):
    teacher_fields = {"teacher": str(teacher)} if loss != "ce" else {"teacher": "none"}
    fused = losses(corpus, tmp_path, "fused", loss=loss, **teacher_fields)
    unfused = losses(corpus, tmp_path, "unfused", loss=loss, head_loss="unfused", **teacher_fields)
    assert_same_curve(fused, unfused)


def test_compiled_student_trains_like_eager(corpus, teacher, tmp_path):
    eager = losses(corpus, tmp_path, "eager", teacher=str(teacher))
    compiled = losses(corpus, tmp_path, "compiled", teacher=str(teacher), compile=True)
    assert_same_curve(compiled, eager)
