from django.urls import path

from certificates import views

urlpatterns = [
    path("", views.certificate_list, name="certificate-list"),
    path("upload/<str:kind>/", views.certificate_upload, name="certificate-upload"),
    path("<str:certificate_id>/", views.certificate_detail, name="certificate-detail"),
    path("<str:certificate_id>/replace/", views.certificate_replace, name="certificate-replace"),
    path("<str:certificate_id>/delete/", views.certificate_delete, name="certificate-delete"),
    path("<str:certificate_id>/crls/upload/", views.crl_upload, name="crl-upload"),
    path("<str:certificate_id>/crls/<int:crl_id>/delete/", views.crl_delete, name="crl-delete"),
]
