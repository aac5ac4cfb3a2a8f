"""Simple scenes (one coloured shape on white), their captions and questions, and ShapeEval, the detector that scores
generated images and chat answers against them. numpy + PIL only."""
from .scenes import (COLORS, HELD_OUT, POSITIONS, QUESTIONS, SHAPES, Scene, caption, draw, parse_caption,
                     sample_scenes, train_triples)

__all__ = ["COLORS", "SHAPES", "POSITIONS", "QUESTIONS", "HELD_OUT", "Scene", "caption", "draw", "parse_caption",
           "sample_scenes", "train_triples"]
