"""Browser views, one module per feature (experiments, runs, compare, leaderboard, workers).

Every page needs a logged-in user; every object comes through `webapp.experiments.access`, which
lets anyone logged in read and only the owner or staff change.
"""
