"""The names of the fitted forms (scaling/fit.py has one function per form). No numpy, scipy or pandas here, so
the command line can offer them as choices without importing the fits."""

FORMS = ("compute", "params", "tokens", "chinchilla", "envelope", "isoflop", "compute_pure", "params_pure")
# the forms that predict the loss at a compute budget
COMPUTE_FORMS = ("compute", "chinchilla", "envelope", "isoflop", "compute_pure")
PURE_FORMS = {"compute_pure": "compute", "params_pure": "params"}  # A·x^−α: the 1-D forms without E
ADVISED_FORMS = ("chinchilla", "compute")  # the forms the next-run advisor (scaling/advise.py) refits
