from django.http import JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt


def json_view(request):
    return JsonResponse({"framework": "django", "items": [1, 2, 3], "query": request.GET.get("q")})


@csrf_exempt
def form_view(request):
    return JsonResponse({"name": request.POST["name"], "tags": request.POST.getlist("tag")})


def stream_view(request):
    n = int(request.GET.get("n", "5"))
    who = request.GET.get("who", "")
    return StreamingHttpResponse(("row %d %s\n" % (i, who) for i in range(n)), content_type="text/plain")
