"""transformers.Trainer with decaykit's param groups: one changed line (Trainer -> DecayTrainer).

HF's own rule decays the BatchNorm weights of its ResNet (they are called ``normalization``,
which no ``norm`` regex catches); decaykit's groups leave them, and all biases, undecayed.

    python examples/hf_trainer.py --steps 20
"""

from __future__ import annotations

import argparse
import tempfile

import torch
import transformers

from decaykit.integrations.hf import DecayTrainer


class RandomImages(torch.utils.data.Dataset):
    """Random 16x16 images with random labels: enough to run the Trainer without a download."""

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        return {"pixel_values": torch.randn(3, 16, 16, generator=g), "labels": torch.tensor(i % 3)}


def main(argv: list[str] | None = None) -> DecayTrainer:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--output-dir", default=None)
    opts = parser.parse_args(argv)

    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                       layer_type="basic", num_labels=3)
    model = transformers.ResNetForImageClassification(config)  # built from a config: no download
    args = transformers.TrainingArguments(
        output_dir=opts.output_dir or tempfile.mkdtemp(), max_steps=opts.steps, per_device_train_batch_size=8,
        learning_rate=1e-2, weight_decay=0.05, use_cpu=True, report_to=[], save_strategy="no",
        logging_strategy="no", disable_tqdm=True,
    )
    trainer = DecayTrainer(model=model, args=args, train_dataset=RandomImages())  # the one changed line
    trainer.train()

    hf_decays = set(transformers.Trainer.get_decay_parameter_names(trainer, model))
    for group in trainer.optimizer.param_groups:
        print(f"weight_decay={group['weight_decay']:g}: {len(group['params'])} tensors")
    undecayed_norms = [d.name for d in trainer.decay_plan() if d.role == "norm" and d.name in hf_decays]
    print(f"BatchNorm weights HF's own rule would have decayed, left alone here: {len(undecayed_norms)}")
    return trainer


if __name__ == "__main__":
    main()
