from django.urls import path

from certificates import acme_views, views

urlpatterns = [
    path("", views.certificate_list, name="certificate-list"),
    path("upload/<str:kind>/", views.certificate_upload, name="certificate-upload"),
    path("acme/", acme_views.acme_issue, name="acme-issue"),
    path("acme/<str:issuance_id>/", acme_views.acme_issuance, name="acme-issuance"),
    path("acme/<str:issuance_id>/status/", acme_views.acme_status, name="acme-status"),
    path("acme/<str:issuance_id>/renew/", acme_views.acme_renew, name="acme-renew"),
    path("acme/<str:issuance_id>/delete/", acme_views.acme_delete, name="acme-delete"),
    path("<str:certificate_id>/", views.certificate_detail, name="certificate-detail"),
    path("<str:certificate_id>/replace/", views.certificate_replace, name="certificate-replace"),
    path("<str:certificate_id>/delete/", views.certificate_delete, name="certificate-delete"),
    path("<str:certificate_id>/crls/upload/", views.crl_upload, name="crl-upload"),
    path("<str:certificate_id>/crls/<int:crl_id>/delete/", views.crl_delete, name="crl-delete"),
]
