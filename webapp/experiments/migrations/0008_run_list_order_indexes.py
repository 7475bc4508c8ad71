"""Indexes in the runs list's orders, so a page is read in order rather than sorted."""

from django.db import migrations, models

# SQLite refuses NULLS LAST in an index; its planner sorts there, which is fine at the volumes
# SQLite serves. PostgreSQL reads a page of the "best test accuracy" order straight from it.
ACCURACY_INDEX = "run_best_accuracy_first"


def create_accuracy_index(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            f'CREATE INDEX IF NOT EXISTS "{ACCURACY_INDEX}" ON "experiments_run" '
            '("test_accuracy" DESC NULLS LAST, "id" DESC)'
        )


def drop_accuracy_index(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f'DROP INDEX IF EXISTS "{ACCURACY_INDEX}"')


class Migration(migrations.Migration):
    dependencies = [
        ("experiments", "0007_series_summary"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="run",
            index=models.Index(fields=["-created_at", "-id"], name="run_newest_first"),
        ),
        migrations.RunPython(create_accuracy_index, drop_accuracy_index),
    ]
