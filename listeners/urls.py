from django.urls import path

from listeners.views import (
    acls,
    errorpages,
    listeners,
    logs,
    monitoring,
    servergroups,
    serverstates,
    tlspolicies,
    wizard,
)

LISTENER = "instances/<str:instance_id>/listeners/<str:listener_id>/"

urlpatterns = [
    # The Listener tab of an instance, the wizard and Quick Create.
    path(
        "instances/<str:instance_id>/listeners/", listeners.listener_tab, name="instance-listeners"
    ),
    path("instances/<str:instance_id>/listeners/create/", wizard.start, name="listener-create"),
    path(
        "instances/<str:instance_id>/listeners/create/<str:step>/",
        wizard.step,
        name="listener-create-step",
    ),
    path(
        "instances/<str:instance_id>/listeners/quick-create/",
        wizard.quick_create,
        name="listener-quick-create",
    ),
    path(
        "instances/<str:instance_id>/listeners/wizard-options/",
        wizard.protocol_options,
        name="listener-wizard-options",
    ),
    path(
        "listeners/server-group-preview/",
        wizard.server_group_preview,
        name="listener-wizard-group-preview",
    ),
    # One listener: details and lifecycle actions.
    path(LISTENER, listeners.listener_detail, name="listener-detail"),
    path(LISTENER + "modify/", listeners.listener_modify, name="listener-modify"),
    path(LISTENER + "start/", listeners.listener_start, name="listener-start"),
    path(LISTENER + "stop/", listeners.listener_stop, name="listener-stop"),
    path(LISTENER + "delete/", listeners.listener_delete, name="listener-delete"),
    path(LISTENER + "server-group/", listeners.listener_server_group, name="listener-server-group"),
    path(LISTENER + "certificates/", listeners.listener_certificates, name="listener-certificates"),
    path(LISTENER + "tls-policy/", listeners.listener_tls_policy, name="listener-tls-policy"),
    path(LISTENER + "health-check/", listeners.listener_health_check, name="listener-health-check"),
    path(LISTENER + "status/", listeners.listener_status, name="listener-status"),
    path(LISTENER + "monitoring/", monitoring.listener_monitoring, name="listener-monitoring"),
    path(LISTENER + "logs/", logs.listener_logs, name="listener-logs"),
    path(LISTENER + "logs/download/", logs.listener_logs_download, name="listener-logs-download"),
    path(LISTENER + "rules/add/", listeners.rule_create, name="listener-rule-create"),
    path(LISTENER + "rules/<int:rule_id>/", listeners.rule_edit, name="listener-rule-edit"),
    path(
        LISTENER + "rules/<int:rule_id>/delete/", listeners.rule_delete, name="listener-rule-delete"
    ),
    path(
        LISTENER + "rules/<int:rule_id>/<str:direction>/",
        listeners.rule_move,
        name="listener-rule-move",
    ),
    path(
        LISTENER + "error-pages/<str:status>/",
        errorpages.error_page_edit,
        name="listener-error-page",
    ),
    path(
        LISTENER + "error-pages/<str:status>/remove/",
        errorpages.error_page_remove,
        name="listener-error-page-remove",
    ),
    # Navigation pages.
    path("server-groups/", servergroups.group_list, name="servergroup-list"),
    path("server-groups/create/", servergroups.group_create, name="servergroup-create"),
    path("server-groups/<str:group_id>/", servergroups.group_detail, name="servergroup-detail"),
    path("server-groups/<str:group_id>/edit/", servergroups.group_edit, name="servergroup-edit"),
    path(
        "server-groups/<str:group_id>/delete/", servergroups.group_delete, name="servergroup-delete"
    ),
    path(
        "server-groups/<str:group_id>/servers/<int:server_pk>/state/",
        serverstates.server_state,
        name="servergroup-server-state",
    ),
    path("tls-policies/", tlspolicies.policy_list, name="tlspolicy-list"),
    path("tls-policies/create/", tlspolicies.policy_create, name="tlspolicy-create"),
    path("tls-policies/<str:policy_id>/", tlspolicies.policy_detail, name="tlspolicy-detail"),
    path("tls-policies/<str:policy_id>/edit/", tlspolicies.policy_edit, name="tlspolicy-edit"),
    path(
        "tls-policies/<str:policy_id>/delete/", tlspolicies.policy_delete, name="tlspolicy-delete"
    ),
    path("access-control/", acls.acl_list, name="acl-list"),
    path("access-control/create/", acls.acl_create, name="acl-create"),
    path("access-control/<str:acl_id>/", acls.acl_detail, name="acl-detail"),
    path("access-control/<str:acl_id>/edit/", acls.acl_edit, name="acl-edit"),
    path("access-control/<str:acl_id>/delete/", acls.acl_delete, name="acl-delete"),
]
