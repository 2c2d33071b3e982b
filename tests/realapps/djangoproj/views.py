from django.http import JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt


def json_view(request):
    return JsonResponse({"framework": "django", "items": [1, 2, 3], "query": request.GET.get("q")})


@csrf_exempt
def form_view(request):
    return JsonResponse({"name": request.POST["name"], "tags": request.POST.getlist("tag")})


def stream_view(request):
    return StreamingHttpResponse(("row %d\n" % i for i in range(5)), content_type="text/plain")
