from django.urls import path

from listeners import views

urlpatterns = [
    path("instances/<str:instance_id>/listeners/", views.listener_tab, name="instance-listeners"),
]
