"""Sweeps: a search over configurations, each tried as an Experiment (one run per seed).

space.py   the varied fields: parsing, checking, grid expansion, seeded random points
search.py  proposing the next configurations (grid order, random, Optuna TPE ask-and-tell)
service.py create, top up (as trials finish), cancel; one path with create_experiment
results.py a sweep's configurations with their aggregates over seeds, in SQL
"""
