from django.urls import path

from tenants.signin import views

app_name = "signin"
urlpatterns = [
    path("two-factor/setup/", views.setup, name="setup"),
    path("two-factor/verify/", views.verify_view, name="verify"),
]
