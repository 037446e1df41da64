"""A tiny GPT-2 from a config and a `transformers.Trainer` that reads its rows in order, shared
by the Trainer-callback tests and the torchrun script they launch
(`torchrun --nproc_per_node=2 tests/helpers/hf_trainer.py OUT_DIR`: each rank saves the
parameters as the callback left them)."""
from __future__ import annotations

import sys

import torch
import transformers
from torch.utils.data import SequentialSampler

from initlab.integrations.hf import InitCallback, causal_lm_batches

V, T = 40, 12  # vocabulary, sequence length
IDS = torch.randint(0, V, (2000,), generator=torch.Generator().manual_seed(0))
SETTINGS = dict(steps=4, gamma=30.0, scale_lr=0.05)  # |g|_1 starts near 30: both branches


def gpt2(seed: int = 0) -> transformers.PreTrainedModel:
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=V, n_positions=T, n_embd=16, n_layer=2, n_head=2,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.AutoModelForCausalLM.from_config(cfg)


def rows(batch_size: int = 4) -> list[dict[str, torch.Tensor]]:
    """The token blocks as dataset rows; in order, batches of `batch_size` are `causal_lm_batches`."""
    return [{k: v[i] for k, v in b.items()} for b in causal_lm_batches(IDS, T, batch_size)
            for i in range(batch_size)]


class InOrder(transformers.Trainer):
    """A Trainer that reads its rows in order, so a test knows its batches."""

    def _get_train_sampler(self, *args, **kwargs):
        return SequentialSampler(self.train_dataset)


class Snapshot(transformers.TrainerCallback):
    """Parameters and the torch RNG state at on_train_begin (after the callbacks before it)."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.params = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.rng = torch.get_rng_state()


def trainer(callbacks: list, out_dir: str, model=None, **kwargs) -> transformers.Trainer:
    args = transformers.TrainingArguments(
        output_dir=out_dir, max_steps=kwargs.pop("max_steps", 2), per_device_train_batch_size=4,
        learning_rate=1e-3, report_to=[], use_cpu=True, save_strategy="no",
        logging_strategy="no", disable_tqdm=True, **kwargs)
    return InOrder(model=model if model is not None else gpt2(), args=args,
                   train_dataset=rows(), callbacks=callbacks)


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    init, snap = InitCallback("gradinit", **SETTINGS), Snapshot()
    t = trainer([init, snap], out_dir)
    t.train()
    torch.save(dict(params=snap.params, scales=init.report.scales, history=init.report.history),
               f"{out_dir}/rank{t.args.process_index}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
