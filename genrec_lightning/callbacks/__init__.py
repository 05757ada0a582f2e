"""Callbacks that orchestrate training (schedules, monitors); the maths lives elsewhere."""

from genrec_lightning.callbacks.collisions import CollisionMonitor
from genrec_lightning.callbacks.compile import Compile
from genrec_lightning.callbacks.grad_share import GradientShares
from genrec_lightning.callbacks.objectives import CurriculumScheduler, ObjectiveWeights
from genrec_lightning.callbacks.predictions import TopKWriter
from genrec_lightning.callbacks.temperature import TemperatureAnnealing, anneal
from genrec_lightning.callbacks.test_users import TestUsersWriter

__all__ = [
    "CollisionMonitor",
    "Compile",
    "CurriculumScheduler",
    "GradientShares",
    "ObjectiveWeights",
    "TemperatureAnnealing",
    "TestUsersWriter",
    "TopKWriter",
    "anneal",
]
