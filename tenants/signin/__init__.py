"""Sign-in protection: lockout after repeated failures (django-axes) and a second factor
for everyone who signs in (django-otp: a TOTP app, and one-time recovery codes).

- `lockouts`: the authentication backend that refuses a locked-out name or address, the
  lockouts platform staff see, and lifting one.
- `second_factor`: enrolment, verification, recovery codes and their reset.
- `middleware`: a signed-in person without a verified second factor reaches only the
  second factor's own pages and sign-out.
- `views` and `urls`: those pages, and the page a locked-out attempt gets.
- `admin`: the platform-staff-only pages of lockouts and second factors.
"""
