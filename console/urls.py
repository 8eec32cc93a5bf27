"""URL map of the console."""

from django.contrib.auth import views as auth_views
from django.urls import include, path

from console import audit_views, backup_views, prometheus, token_views, views
from console.api.main import api

urlpatterns = [
    path("", views.home, name="home"),
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(redirect_authenticated_user=True),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("instances/", views.instance_list, name="instance-list"),
    path("instances/create/", views.instance_create, name="instance-create"),
    path("instances/import/", backup_views.instance_import, name="instance-import"),
    path("instances/<str:instance_id>/", views.instance_detail, name="instance-detail"),
    path("instances/<str:instance_id>/delete/", views.instance_delete, name="instance-delete"),
    path("instances/<str:instance_id>/nodes/", views.node_list, name="instance-nodes"),
    path(
        "instances/<str:instance_id>/export/", backup_views.instance_export, name="instance-export"
    ),
    path(
        "instances/<str:instance_id>/import/",
        backup_views.instance_import,
        name="instance-import-into",
    ),
    path("instances/<str:instance_id>/nodes/add/", views.node_create, name="node-create"),
    path(
        "instances/<str:instance_id>/nodes/<int:node_id>/delete/",
        views.node_delete,
        name="node-delete",
    ),
    path("tokens/", token_views.token_list, name="token-list"),
    path("tokens/<int:token_id>/revoke/", token_views.token_revoke, name="token-revoke"),
    path("audit-log/", audit_views.audit_log, name="audit-log"),
    path("metrics", prometheus.metrics, name="metrics"),
    path("api/v1/", api.urls),
    path("", include("listeners.urls")),
    path("certificates/", include("certificates.urls")),
]
