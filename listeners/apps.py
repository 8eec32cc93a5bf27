from django.apps import AppConfig


class ListenersConfig(AppConfig):
    name = "listeners"
    default_auto_field = "django.db.models.BigAutoField"
