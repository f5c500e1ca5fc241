"""File formats: named mixes and mix YAML files, cluster YAML files, request traces.

Readers and writers only; the parsing and validation of what they hold is pure and lives in
``tridentcore.core``. Light on purpose (the Locust file imports it): the standard library,
``yaml`` and ``tridentcore.core``. Import the submodules (:mod:`.mixes`, :mod:`.traces`;
:mod:`.bounded` reads every input file within the limits of ``tridentcore.core.defaults``).
"""
