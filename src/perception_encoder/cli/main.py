"""Entry point of the ``pe`` command: a click group whose commands are imported only when used.

Each command is a module ``perception_encoder.cli.<module>`` exposing a click command named ``command``.
Keeping them lazy makes ``pe --help`` fast (no torch import) and each command a file of its own.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any

import click

# command name -> (module, one-line help shown by `pe --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("models", "List every registered model."),
    "info": ("info", "Describe a checkpoint: format, family, dims, parameters."),
    "convert": ("convert", "Convert a checkpoint between formats."),
    "classify": ("classify", "Zero-shot classify images, videos or audio against labels."),
    "detect-sounds": ("detect_sounds", "Time spans where a sound is heard in audio (PE-A-Frame)."),
    "embed": ("embed", "Embed files, folders, tars, tables or URLs into a dataset (or one .npy / .parquet)."),
    "features": ("features", "Save per-patch feature maps of an image."),
    "pca": ("pca", "PCA-to-RGB picture of an image's patch features."),
    "similarity": ("similarity", "Similarity heatmap from a point or a text prompt."),
    "correspond": ("correspond", "Point correspondences between two images."),
    "track": ("track", "Propagate a mask through video frames with patch features."),
    "train": ("train", "Contrastive training / fine-tuning with PE's recipe."),
    "eval": ("evaluate", "Zero-shot, retrieval, linear-probe and k-NN evaluation."),
    "export": ("export", "Export a model to ONNX."),
    "index": ("index", "Build the vector index of an embedding dataset."),
    "search": ("search", "Search an embedding dataset with text or image queries."),
    "dedup": ("dedup", "Groups of near-duplicate rows of an embedding dataset."),
    "serve": ("serve", "Serve embeddings, classification, features and search over HTTP."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, (module, _) in COMMANDS.items() if _available(module)]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS or not _available(COMMANDS[name][0]):
            return None
        return importlib.import_module(f"perception_encoder.cli.{COMMANDS[name][0]}").command

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; errors about the user's inputs become one-line messages (``options.user_errors``)."""
        from .options import user_errors

        try:
            with user_errors():
                return super().invoke(ctx)
        except BrokenPipeError:  # `pe ... | head`: the reader left; nothing more to say
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            sys.exit(141)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _available(module: str) -> bool:
    return importlib.util.find_spec(f"perception_encoder.cli.{module}") is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="perception-encoder")
def main() -> None:
    """Perception Encoder: embeddings, zero-shot classification and features from PE models."""


if __name__ == "__main__":
    main()
