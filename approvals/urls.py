from django.urls import path

from approvals.views import approval_link

urlpatterns = [
    path("link/<str:token>/", approval_link, name="approval-link"),
]
