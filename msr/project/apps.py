from django.apps import AppConfig


class ProjectConfig(AppConfig):
    """The project as an app only so that Django finds its management commands."""

    name = "msr.project"
    label = "msr_project"
    verbose_name = "MSR project"
