"""Every setting hypernet accepts, defined once per family with its limits (see ``base`` for how surfaces derive).

Families: :class:`CreateSettings` (a new network), :class:`GenerateSettings` (txt2img/img2img),
:class:`TrainSettings` (a training run), :class:`PreprocessSettings` (preparing images), :class:`ServerOptions`
(A1111's ``/options``), :class:`Folders` (where models and networks are found) and :class:`ServeSettings`
(``hypernet serve``'s own options). The CLI options, HTTP request
models, web UI inputs and README tables are derived from these models; :mod:`hypernet.settings.limits` holds the
caps.
"""

from hypernet.settings.base import On, SettingsError, SettingsModel, refusal, sentence
from hypernet.settings.create import CreateSettings
from hypernet.settings.folders import Folders
from hypernet.settings.generate import GenerateSettings
from hypernet.settings.preprocess import PreprocessSettings
from hypernet.settings.serve import ServeSettings
from hypernet.settings.train import TrainSettings

__all__ = ["CreateSettings", "Folders", "GenerateSettings", "On", "PreprocessSettings", "ServeSettings", "SettingsError",
           "SettingsModel", "TrainSettings", "refusal", "sentence"]
