from django.urls import re_path

from approvals.views import approval_link

urlpatterns = [
    # Any token, even an empty one, gets the link page's own refusal rather than a bare 404.
    re_path(r"^link/(?P<token>[^/]*)/$", approval_link, name="approval-link"),
]
